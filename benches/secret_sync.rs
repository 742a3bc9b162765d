//! The SecretSync controller against a real API server and OpenBao: how long from creating a
//! SecretSync to its Secret being there (one at a time, and 100 at once), how many OpenBao
//! requests one rotation of 100 SecretSyncs of one service account costs, and the
//! controller's memory with 1,000 SecretSyncs.
//!
//! Run: `cargo bench --profile dev --bench secret_sync` (or `--release` for production
//! figures).

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::sync_controller::{Site, secret_sync, vault_for};
use support::{ApiServer, TestApi as _, ms, percentile};

const GROUP: &str = "secret-sync.x-k8s.io";
const NAMESPACE: &str = "bench";
const BATCH: usize = 100;
const FOR_RSS: usize = 1000;
/// The poll interval: one rotation of the batch happens within the run.
const INTERVAL: Duration = Duration::from_secs(20);

/// The names of the Secrets in the namespace holding `value` (base64).
fn secrets_with(api: &ApiServer, value: &str) -> Vec<String> {
    api.list("", "secrets")
        .into_iter()
        .filter(|s| s["metadata"]["namespace"] == NAMESPACE && s["data"]["password"] == value)
        .filter_map(|s| s["metadata"]["name"].as_str().map(str::to_owned))
        .collect()
}

fn b64(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let Some(iterations) = support::bench_iterations("secret_sync", 20) else {
        return;
    };
    let Some(api) = ApiServer::start().await else {
        return;
    };
    let first = "bench-value-0";
    let Some(bao) = vault_for(&api, NAMESPACE, first) else {
        return;
    };
    let site = Site::new(&api);
    let controller = site.start(
        "ctl-bench",
        &[
            format!("--vault-address={}", bao.addr),
            format!("--rotation-poll-interval={}s", INTERVAL.as_secs()),
            "--concurrent-syncs=16".to_owned(),
            "-v=0".to_owned(),
        ],
    );
    let sync = |name: &str| {
        secret_sync(
            NAMESPACE,
            name,
            "app-sa",
            "vault-app",
            &[("password", "password")],
        )
    };
    let present = |name: &str| api.get("", "secrets", NAMESPACE, name).is_some();

    // One at a time.
    let mut one = Vec::with_capacity(iterations);
    for i in 0..iterations {
        let name = format!("one-{i}");
        let started = Instant::now();
        api.insert(GROUP, "secretsyncs", sync(&name));
        wait_for(&name, Duration::from_secs(60), || present(&name));
        one.push(started.elapsed());
    }
    one.sort();

    // A hundred at once.
    let mut created = HashMap::new();
    let batch_started = Instant::now();
    for i in 0..BATCH {
        let name = format!("batch-{i:03}");
        api.insert(GROUP, "secretsyncs", sync(&name));
        created.insert(name, Instant::now());
    }
    let mut hundred = Vec::with_capacity(BATCH);
    wait_for("the batch", Duration::from_secs(120), || {
        for name in secrets_with(&api, &b64(first)) {
            if let Some(at) = created.remove(&name) {
                hundred.push(at.elapsed());
            }
        }
        created.is_empty()
    });
    let batch_all = batch_started.elapsed();
    hundred.sort();

    // One rotation of everything (all of one service account): count what OpenBao serves.
    let second = "bench-value-1";
    bao.bao(&["kv", "put", "secret/app", &format!("password={second}")]);
    let before = bao.requests().len();
    let total = iterations + BATCH;
    wait_for("the rotation", INTERVAL * 3, || {
        secrets_with(&api, &b64(second)).len() == total
    });
    let rotation: Vec<(String, String)> = bao.requests().split_off(before);
    let reads = rotation
        .iter()
        .filter(|(_, p)| p == "secret/data/app")
        .count();
    let logins = rotation
        .iter()
        .filter(|(_, p)| p == "auth/kubernetes/login")
        .count();

    // Memory with a thousand.
    let idle = controller.rss_kib();
    for i in total..FOR_RSS {
        api.insert(GROUP, "secretsyncs", sync(&format!("rss-{i:04}")));
    }
    wait_for("a thousand Secrets", Duration::from_secs(300), || {
        secrets_with(&api, &b64(second)).len() >= FOR_RSS
    });
    std::thread::sleep(Duration::from_millis(500));
    let loaded = controller.rss_kib();
    let statuses: Vec<Value> = api.list(GROUP, "secretsyncs");
    assert!(statuses.len() >= FOR_RSS);

    println!();
    println!("SecretSync created -> Secret present (real API server, OpenBao KV)");
    println!("| SecretSyncs | p50 | p90 | p99 | all present |");
    println!("|--:|--:|--:|--:|--:|");
    println!(
        "| 1 ({iterations} runs, one by one) | {} | {} | {} | |",
        ms(percentile(&one, 0.5)),
        ms(percentile(&one, 0.9)),
        ms(percentile(&one, 0.99))
    );
    println!(
        "| {BATCH} at once | {} | {} | {} | {} |",
        ms(percentile(&hundred, 0.5)),
        ms(percentile(&hundred, 0.9)),
        ms(percentile(&hundred, 0.99)),
        ms(batch_all)
    );
    println!();
    println!("| one rotation of {total} SecretSyncs of one service account | OpenBao requests |");
    println!("|---|--:|");
    println!("| KV reads | {reads} |");
    println!("| logins | {logins} |");
    println!();
    println!("| controller process | value |");
    println!("|---|--:|");
    println!(
        "| RSS with {total} SecretSyncs | {:.1} MiB |",
        idle as f64 / 1024.0
    );
    println!(
        "| RSS with {FOR_RSS} SecretSyncs | {:.1} MiB |",
        loaded as f64 / 1024.0
    );
}
