//! Rotation and sync through the real CSI socket with the `local` provider and the fake API
//! server: how long after a republish (once the interval has passed) a changed value is in
//! the file and in the synced Secret, and the node process's memory with 250 volumes that
//! each sync a Secret. Needs root (tmpfs).
//!
//! Run: `cargo bench --profile dev --bench sync` (or `--release` for production figures).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{ApiServer, Driver, Pod, TestApi, ms, percentile, secret_data};

const GROUP: &str = "secrets-store.csi.x-k8s.io";
const VOLUMES_FOR_RSS: usize = 250;
const INTERVAL: Duration = Duration::from_millis(100);

fn class(namespace: &str, secret: &str) -> Value {
    json!({
        "apiVersion": "secrets-store.csi.x-k8s.io/v1",
        "kind": "SecretProviderClass",
        "metadata": {"name": "app", "namespace": namespace},
        "spec": {
            "provider": "local",
            "parameters": {"source": "values.yaml", "objects": "- objectName: value\n"},
            "secretObjects": [{"secretName": secret, "type": "Opaque",
                               "data": [{"objectName": "value", "key": "value"}]}],
        },
    })
}

fn synced_value(api: &dyn TestApi, namespace: &str, name: &str) -> Option<Vec<u8>> {
    let secret = api.get("", "secrets", namespace, name)?;
    secret_data(&secret).remove("value")
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let Some(iterations) = support::bench_iterations("sync", 50) else {
        return;
    };
    let Some(api) = ApiServer::start().await else {
        return;
    };
    let interval = format!("--rotation-poll-interval={}ms", INTERVAL.as_millis());
    let driver = Driver::start(&api, &["-v=0", "--enable-secret-rotation", &interval]).await;
    let source = driver.local_root.join("values.yaml");
    std::fs::write(&source, "value: v-0\n").unwrap();
    api.insert(GROUP, "secretproviderclasses", class("rotate", "rotated"));
    let mut pod = Pod::new("rotating", "rotate");
    pod.create_in(&api, "v", "app", None);
    let target = driver.target(&pod.uid, "v");
    let mut node = driver.node();
    node.node_publish_volume(pod.publish(&target, "app"))
        .await
        .unwrap();

    // Rotation: the value changes, the interval passes, kubelet republishes.
    let mut to_file = Vec::with_capacity(iterations);
    let mut to_secret = Vec::with_capacity(iterations);
    for i in 1..=iterations {
        let value = format!("v-{i}");
        std::fs::write(&source, format!("value: {value}\n")).unwrap();
        tokio::time::sleep(INTERVAL + Duration::from_millis(5)).await;
        let started = Instant::now();
        node.node_publish_volume(pod.publish(&target, "app"))
            .await
            .unwrap();
        to_file.push(started.elapsed());
        assert_eq!(
            std::fs::read(target.join("value")).unwrap(),
            value.as_bytes()
        );
        loop {
            if synced_value(&api, "rotate", "rotated").as_deref() == Some(value.as_bytes()) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "Secret never followed"
            );
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        to_secret.push(started.elapsed());
    }
    to_file.sort();
    to_secret.sort();

    // Memory: 250 pods, each in its own namespace with a class that syncs a Secret.
    let idle_rss = driver.rss_kib();
    // The namespaces, classes and pods exist first (untimed), as on a node.
    let pods: Vec<Pod> = (0..VOLUMES_FOR_RSS)
        .map(|i| {
            let namespace = format!("ns-{i:03}");
            api.insert(GROUP, "secretproviderclasses", class(&namespace, "synced"));
            let mut pod = Pod::new("app", &namespace);
            pod.create_in(&api, "v", "app", None);
            pod
        })
        .collect();
    let started = Instant::now();
    for pod in &pods {
        let target = driver.target(&pod.uid, "v");
        node.node_publish_volume(pod.publish(&target, "app"))
            .await
            .unwrap();
    }
    let published = started.elapsed();
    loop {
        let synced = api
            .list("", "secrets")
            .iter()
            .filter(|s| s["metadata"]["name"] == "synced")
            .count();
        if synced == VOLUMES_FOR_RSS {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "only {synced} synced"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let all_synced = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let loaded_rss = driver.rss_kib();

    println!();
    println!(
        "rotation after the interval ({} iterations, interval {}; timed from kubelet's republish)",
        iterations,
        humantime::format_duration(INTERVAL)
    );
    println!("| measure | p50 | p90 | p99 |");
    println!("|---|--:|--:|--:|");
    for (name, samples) in [
        ("changed value -> file", &to_file),
        ("changed value -> synced Secret", &to_secret),
    ] {
        println!(
            "| {name} | {} | {} | {} |",
            ms(percentile(samples, 0.5)),
            ms(percentile(samples, 0.9)),
            ms(percentile(samples, 0.99))
        );
    }
    println!();
    println!("| node process | value |");
    println!("|---|--:|");
    println!(
        "| RSS before the {VOLUMES_FOR_RSS} volumes | {:.1} MiB |",
        idle_rss as f64 / 1024.0
    );
    println!(
        "| RSS with {VOLUMES_FOR_RSS} volumes each syncing a Secret | {:.1} MiB |",
        loaded_rss as f64 / 1024.0
    );
    println!(
        "| {VOLUMES_FOR_RSS} publishes, one by one | {} |",
        ms(published)
    );
    println!(
        "| first publish -> all {VOLUMES_FOR_RSS} Secrets synced | {} |",
        ms(all_synced)
    );
}
