//! The built-in `gcp` provider against the Secret Manager emulator (behind the test proxy that
//! checks tokens and counts calls), printed as two tables: publish latency through the real
//! CSI socket for 1, 10 and 50 secrets, and the Google calls for 50 pods of one service
//! account, next to what the GCP plugin's design makes (one token exchange and one read per
//! secret on every mount). Needs root (tmpfs) and the emulator (scripts/cluster-build).
//!
//! Run: `cargo bench --profile dev --bench gcp` (or `--release` for production figures).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Instant;

use serde_json::json;
use support::gcp::{Google, POOL};
use support::{ApiServer, Driver, Pod, TestApi, ms, percentile, spc, unpublish};

const GROUP: &str = "secrets-store.csi.x-k8s.io";
const BASE: &str = "https://container.googleapis.com/v1";
const SIZES: [usize; 3] = [1, 10, 50];
const PODS: usize = 50;

fn secrets(count: usize) -> String {
    (0..count)
        .map(|i| {
            format!(
                "- {{resourceName: projects/test-project/secrets/obj-{i}/versions/latest, path: obj-{i}}}\n"
            )
        })
        .collect()
}

fn pod(index: usize) -> Pod {
    let mut pod = Pod::new(&format!("bench-{index}"), "team");
    pod.service_account = "app-sa".to_owned();
    pod
}

async fn driver(api: &dyn TestApi, google: &Google, extra: &[&str]) -> Driver {
    let flags = google.flags(BASE);
    let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
    args.push("--builtin-providers=gcp");
    args.extend_from_slice(extra);
    Driver::start(api, &args).await
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let Some(iterations) = support::bench_iterations("gcp", 50) else {
        return;
    };
    let Some(google) = Google::start(BASE).await else {
        println!("gcp bench skipped: the Secret Manager emulator is not built");
        return;
    };
    for i in 0..SIZES[2] {
        let value = format!("bench-value-{i}");
        google
            .secret(
                "projects/test-project",
                &format!("obj-{i}"),
                &[value.as_bytes()],
            )
            .await;
    }
    let Some(api) = ApiServer::start().await else {
        return;
    };
    support::service_account(&api, "team", "app-sa");
    for size in SIZES {
        api.insert(
            GROUP,
            "secretproviderclasses",
            spc(
                "team",
                &format!("bench-{size}"),
                "gcp",
                json!({"secrets": secrets(size)}),
            ),
        );
    }
    latency(&api, &google, iterations).await;
    calls(&api, &google).await;
}

/// Every publish reads Secret Manager (no shared reads), with the identity's token cached, as
/// during rotation.
async fn latency(api: &dyn TestApi, google: &Google, iterations: usize) {
    let driver = driver(api, google, &["--gcp-read-cache-ttl=0s"]).await;
    println!(
        "gcp publish latency, {iterations} volumes per row (Secret Manager emulator on loopback)"
    );
    println!("| secrets | publish p50 | publish p99 | Google calls per publish |");
    println!("|--:|--:|--:|--:|");
    for size in SIZES {
        let class = format!("bench-{size}");
        let mut node = driver.node();
        let mut publishes = Vec::with_capacity(iterations);
        let before = google.calls().len() + google.exchanges().len();
        for i in 0..iterations {
            let mut pod = pod(size * 100_000 + i);
            pod.register(api, &class);
            let target = driver.target(&pod.uid, "secrets");
            let request = pod.publish_with_tokens(&target, &class, api, &[POOL]);
            let started = Instant::now();
            node.node_publish_volume(request).await.unwrap();
            publishes.push(started.elapsed());
            node.node_unpublish_volume(unpublish(&target))
                .await
                .unwrap();
        }
        publishes.sort();
        let calls = google.calls().len() + google.exchanges().len() - before;
        println!(
            "| {size} | {} | {} | {:.1} |",
            ms(percentile(&publishes, 0.5)),
            ms(percentile(&publishes, 0.99)),
            calls as f64 / iterations as f64,
        );
    }
}

/// Calls for 50 pods of one service account mounting one 50-secret class within one
/// read-sharing window.
async fn calls(api: &dyn TestApi, google: &Google) {
    let driver = driver(api, google, &[]).await;
    let (reads, exchanges) = (google.reads(), google.exchanges().len());
    let pods: Vec<Pod> = (0..PODS).map(|i| pod(900_000 + i)).collect();
    driver
        .publish_rollout(api, &pods, "bench-50", &[POOL])
        .await;
    let reads = google.reads() - reads;
    let exchanges = google.exchanges().len() - exchanges;
    println!();
    println!("Google API calls, {PODS} pods of one service account, one class of 50 secrets");
    println!("| case | token exchanges | AccessSecretVersion | total | GCP plugin's design |");
    println!("|---|--:|--:|--:|--:|");
    println!(
        "| {PODS} pods, read sharing 30s (default) | {exchanges} | {reads} | {} | {} |",
        exchanges + reads,
        PODS * (1 + 50)
    );
}
