//! The built-in `aws` provider against a local moto server, printed as two tables: publish
//! latency through the real CSI socket for 1, 10 and 50 Secrets Manager objects, and the AWS
//! calls (counted by the proxy in front of moto) for a first mount, a rotation with nothing
//! changed, and 50 pods of one service account, next to what ASCP's design makes.
//! Needs root (tmpfs) and moto (scripts/test installs it).
//!
//! Run: `cargo bench --profile dev --bench aws` (or `--release` for production figures).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::moto::Moto;
use support::{ApiServer, Driver, Pod, TestApi, ms, percentile, spc, unpublish};

const GROUP: &str = "secrets-store.csi.x-k8s.io";
const REGION: &str = "us-east-1";
const SIZES: [usize; 3] = [1, 10, 50];
const PODS: usize = 50;

fn objects(count: usize) -> String {
    (0..count)
        .map(|i| format!("- {{objectName: bench/obj-{i}, objectType: secretsmanager}}\n"))
        .collect()
}

fn pod(index: usize) -> Pod {
    let mut pod = Pod::new(&format!("bench-{index}"), "team");
    pod.service_account = "app-sa".to_owned();
    pod
}

fn class(api: &dyn TestApi, name: &str, count: usize) {
    api.insert(
        GROUP,
        "secretproviderclasses",
        spc(
            "team",
            name,
            "aws",
            json!({"region": REGION, "objects": objects(count)}),
        ),
    );
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let Some(iterations) = support::bench_iterations("aws", 50) else {
        return;
    };
    let Some(moto) = Moto::start().await else {
        println!("aws bench skipped: moto_server is not installed");
        return;
    };
    for i in 0..SIZES[2] {
        moto.create_secret(
            REGION,
            &format!("bench/obj-{i}"),
            &format!("bench-value-{i}"),
        )
        .await;
    }
    let Some(api) = ApiServer::start().await else {
        return;
    };
    api.insert(
        "",
        "serviceaccounts",
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "app-sa",
            "namespace": "team", "annotations": {"eks.amazonaws.com/role-arn":
            "arn:aws:iam::123456789012:role/bench"}}}),
    );
    for size in SIZES {
        class(&api, &format!("bench-{size}"), size);
    }
    latency(&api, &moto, iterations).await;
    calls(&api, &moto).await;
}

/// Every publish reads AWS (no shared reads), with the identity's credentials cached, as
/// during rotation.
async fn latency(api: &dyn TestApi, moto: &Moto, iterations: usize) {
    let driver = Driver::start(
        api,
        &[
            &format!("--aws-endpoint-url={}", moto.url),
            "--aws-read-cache-ttl=0s",
        ],
    )
    .await;
    println!("aws publish latency, {iterations} volumes per row (moto server on loopback)");
    println!("| Secrets Manager objects | publish p50 | publish p99 | AWS calls per publish |");
    println!("|--:|--:|--:|--:|");
    for size in SIZES {
        let class = format!("bench-{size}");
        let mut node = driver.node();
        let mut publishes = Vec::with_capacity(iterations);
        // Credentials are obtained once per identity, before the measured publishes.
        let mut warm = pod(size * 100_000 + iterations);
        warm.register(api, &class);
        let target = driver.target(&warm.uid, "secrets");
        node.node_publish_volume(warm.publish_with_tokens(
            &target,
            &class,
            api,
            &["sts.amazonaws.com"],
        ))
        .await
        .unwrap();
        node.node_unpublish_volume(unpublish(&target))
            .await
            .unwrap();
        moto.reset_calls();
        for i in 0..iterations {
            let mut pod = pod(size * 100_000 + i);
            pod.register(api, &class);
            let target = driver.target(&pod.uid, "secrets");
            let request = pod.publish_with_tokens(&target, &class, api, &["sts.amazonaws.com"]);
            let started = Instant::now();
            node.node_publish_volume(request).await.unwrap();
            publishes.push(started.elapsed());
            node.node_unpublish_volume(unpublish(&target))
                .await
                .unwrap();
        }
        publishes.sort();
        println!(
            "| {size} | {} | {} | {:.1} |",
            ms(percentile(&publishes, 0.5)),
            ms(percentile(&publishes, 0.99)),
            moto.calls().len() as f64 / iterations as f64,
        );
    }
}

/// Calls for one 50-object volume's first mount and a rotation with nothing changed, and for
/// 50 pods of one service account starting within one read-sharing window.
async fn calls(api: &dyn TestApi, moto: &Moto) {
    println!();
    println!("AWS API calls, one class of 50 Secrets Manager objects");
    println!("| case | STS | BatchGetSecretValue | GetSecretValue | total | ASCP's design |");
    println!("|---|--:|--:|--:|--:|--:|");
    let row = |case: &str, ascp: usize| {
        let calls = moto.calls().len();
        println!(
            "| {case} | {} | {} | {} | {calls} | {ascp} |",
            moto.count("AssumeRoleWithWebIdentity"),
            moto.count("BatchGetSecretValue"),
            moto.count("GetSecretValue"),
        );
        moto.reset_calls();
    };
    let driver = Driver::start(
        api,
        &[
            &format!("--aws-endpoint-url={}", moto.url),
            "--enable-secret-rotation",
            "--rotation-poll-interval=1s",
            "--aws-read-cache-ttl=0s",
        ],
    )
    .await;
    moto.reset_calls();
    let mut app = pod(1);
    app.register(api, "bench-50");
    let target = driver.target(&app.uid, "secrets");
    let publish = || app.publish_with_tokens(&target, "bench-50", api, &["sts.amazonaws.com"]);
    driver.node().node_publish_volume(publish()).await.unwrap();
    // ASCP: one STS call and one GetSecretValue per object.
    row("first mount", 1 + 50);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    driver.node().node_publish_volume(publish()).await.unwrap();
    // ASCP: STS again, DescribeSecret and GetSecretValue per object (driver >= 1.6 sends no
    // current versions, so nothing is skipped).
    row("rotation, nothing changed", 1 + 2 * 50);
    driver
        .node()
        .node_unpublish_volume(unpublish(&target))
        .await
        .unwrap();
    drop(driver);

    let driver = Driver::start(api, &[&format!("--aws-endpoint-url={}", moto.url)]).await;
    let idle = driver.rss_kib();
    moto.reset_calls();
    let pods: Vec<Pod> = (0..PODS).map(|i| pod(900_000 + i)).collect();
    driver
        .publish_rollout(api, &pods, "bench-50", &["sts.amazonaws.com"])
        .await;
    row(
        &format!("{PODS} pods, read sharing 30s (default)"),
        PODS * 51,
    );
    let rss = driver.rss_kib();
    println!();
    println!(
        "driver RSS: {:.1} MiB at start, {:.1} MiB after {PODS} pods",
        idle as f64 / 1024.0,
        rss as f64 / 1024.0
    );
}
