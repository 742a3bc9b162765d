//! The built-in `azure` provider against the test Key Vault and Entra ID (tests/support/
//! azure.rs), next to the upstream Azure plugin (v1.8.2, built from the Go module proxy)
//! measured in the same run on the same server, printed as two tables: publish latency
//! through the real CSI socket for 1, 10 and 50 secrets, and the Azure requests (tokens and
//! Key Vault calls) for 50 pods of one workload identity. Needs root (tmpfs) and the cluster
//! components (scripts/cluster-build).
//!
//! Run: `cargo bench --profile dev --bench azure` (or `--release` for production figures).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Instant;

use serde_json::json;
use support::azure::{AUDIENCE, Azure};
use support::{ApiServer, Driver, Pod, TestApi, ms, percentile, spc, unpublish};

const GROUP: &str = "secrets-store.csi.x-k8s.io";
const SIZES: [usize; 3] = [1, 10, 50];
const PODS: usize = 50;

fn objects(count: usize) -> String {
    let entries: String = (0..count)
        .map(|i| format!("  - |\n    objectName: obj-{i}\n    objectType: secret\n"))
        .collect();
    format!("array:\n{entries}")
}

fn pod(index: usize) -> Pod {
    let mut pod = Pod::new(&format!("bench-{index}"), "team");
    pod.service_account = "app-sa".to_owned();
    pod
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let Some(iterations) = support::bench_iterations("azure", 50) else {
        return;
    };
    if !support::require_root() || support::azure::plugin_binary().is_none() {
        println!("azure bench skipped: needs root and the Azure plugin (scripts/cluster-build)");
        return;
    }
    let azure = Azure::start().await;
    for i in 0..SIZES[2] {
        azure.secret("kvname", &format!("obj-{i}"), &format!("bench-value-{i}"));
    }
    azure.federate("wi-client", "team", "app-sa");
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
                "azure",
                json!({"keyvaultName": "kvname", "tenantId": "tid", "clientID": "wi-client",
                       "objects": objects(size)}),
            ),
        );
    }
    let flags = azure.flags();
    let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
    args.push("--builtin-providers=azure");
    let mut no_sharing = args.clone();
    no_sharing.push("--azure-read-cache-ttl=0s");
    let ours_unshared = Driver::start(&api, &no_sharing).await;
    let ours = Driver::start(&api, &args).await;
    let theirs = Driver::start(&api, &["--builtin-providers="]).await;
    let front = azure.front().await;
    let log = theirs.dir.path().join("azure-plugin.log");
    let _plugin =
        support::azure::start_plugin(&theirs.provider_dir.join("azure.sock"), &front, &log).await;

    println!(
        "azure publish latency, {iterations} volumes per row (test Key Vault on loopback; the plugin through a TLS front)"
    );
    println!("| secrets | provider | publish p50 | publish p99 | Azure requests per publish |");
    println!("|--:|---|--:|--:|--:|");
    for size in SIZES {
        for (name, driver) in [("built-in", &ours_unshared), ("Azure plugin", &theirs)] {
            latency(&api, &azure, driver, name, size, iterations).await;
        }
    }

    println!();
    println!("Azure requests, {PODS} pods of one workload identity, one class of 50 secrets");
    println!("| provider | token requests | Key Vault calls | total |");
    println!("|---|--:|--:|--:|");
    for (name, driver, base) in [
        ("built-in, read sharing 30s (default)", &ours, 900_000),
        ("Azure plugin", &theirs, 950_000),
    ] {
        let (calls, tokens) = (azure.reads(), azure.exchanges().len());
        let pods: Vec<Pod> = (0..PODS).map(|i| pod(base + i)).collect();
        driver
            .publish_rollout(&api, &pods, "bench-50", &[AUDIENCE])
            .await;
        let calls = azure.reads() - calls;
        let tokens = azure.exchanges().len() - tokens;
        println!("| {name} | {tokens} | {calls} | {} |", tokens + calls);
    }
}

/// Every publish reads Key Vault (no shared reads for the built-in), with the identity's
/// token cached, as during rotation; the plugin gets a token on every mount.
async fn latency(
    api: &dyn TestApi,
    azure: &Azure,
    driver: &Driver,
    name: &str,
    size: usize,
    iterations: usize,
) {
    let class = format!("bench-{size}");
    let mut node = driver.node();
    let mut publishes = Vec::with_capacity(iterations);
    let before = azure.reads() + azure.exchanges().len();
    let offset = if name == "built-in" { 0 } else { 50_000 };
    for i in 0..iterations {
        let mut pod = pod(size * 100_000 + offset + i);
        pod.register(api, &class);
        let target = driver.target(&pod.uid, "secrets");
        let request = pod.publish_with_tokens(&target, &class, api, &[AUDIENCE]);
        let started = Instant::now();
        node.node_publish_volume(request).await.unwrap();
        publishes.push(started.elapsed());
        node.node_unpublish_volume(unpublish(&target))
            .await
            .unwrap();
    }
    publishes.sort();
    let requests = azure.reads() + azure.exchanges().len() - before;
    println!(
        "| {size} | {name} | {} | {} | {:.1} |",
        ms(percentile(&publishes, 0.5)),
        ms(percentile(&publishes, 0.99)),
        requests as f64 / iterations as f64,
    );
}
