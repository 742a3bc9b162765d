//! The built-in `vault` provider against a local OpenBao dev server, printed as two tables:
//! publish latency through the real CSI socket for 1, 10 and 50 KV objects next to the same
//! reads sent one by one with a plain HTTP client (how the upstream provider reads), and the
//! number of requests OpenBao receives when 50 pods of one service account mount one 5-object
//! class. Needs root (tmpfs) and `bao` (scripts/test installs it).
//!
//! Run: `cargo bench --profile dev --bench vault` (or `--release` for production figures).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt as _;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use support::openbao::OpenBao;
use support::{ApiServer, Driver, Pod, TestApi, ms, percentile, service_account, spc, unpublish};

const GROUP: &str = "secrets-store.csi.x-k8s.io";
const SIZES: [usize; 3] = [1, 10, 50];
const PODS: usize = 50;

fn objects(count: usize) -> String {
    (0..count)
        .map(|i| format!("- {{objectName: obj-{i}, secretPath: secret/data/bench/obj-{i}, secretKey: value}}\n"))
        .collect()
}

fn pod(index: usize) -> Pod {
    let mut pod = Pod::new(&format!("bench-{index}"), "team");
    pod.service_account = "app-sa".to_owned();
    pod
}

/// Reads `count` objects with a plain HTTP client, `in_flight` at a time: 1 is the upstream
/// provider's way; 8 shows how fast the server itself can go.
async fn plain_reads(address: &str, token: &str, count: usize, in_flight: usize) -> Duration {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let started = Instant::now();
    futures::stream::iter(0..count)
        .map(|i| {
            let client = client.clone();
            async move {
                let request = http::Request::get(format!("{address}/v1/secret/data/bench/obj-{i}"))
                    .header("X-Vault-Token", token)
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                let response = client.request(request).await.unwrap();
                assert_eq!(response.status(), 200);
                response.into_body().collect().await.unwrap();
            }
        })
        .buffer_unordered(in_flight)
        .collect::<Vec<()>>()
        .await;
    started.elapsed()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let Some(iterations) = support::bench_iterations("vault", 100) else {
        return;
    };
    let Some(api) = ApiServer::start().await else {
        return;
    };
    service_account(&api, "team", "app-sa");
    let (Some(bao), Some(audited)) = (OpenBao::start_unaudited(), OpenBao::start()) else {
        println!("vault bench skipped: `bao` is not installed");
        return;
    };
    latency(&api, &bao, iterations).await;
    backend_load(&api, &audited).await;
}

/// Seeds `bao` with 50 KV secrets readable by role `app` (service account team/app-sa).
fn seed(api: &ApiServer, bao: &OpenBao) {
    for i in 0..SIZES[2] {
        bao.bao(&[
            "kv",
            "put",
            &format!("secret/bench/obj-{i}"),
            &format!("value=bench-value-{i}"),
        ]);
    }
    bao.policy(
        "app",
        r#"path "secret/data/bench/*" { capabilities = ["read"] }"#,
    );
    bao.enable_kubernetes_auth_in(
        None,
        &support::openbao::KubernetesAuth {
            url: api.url(),
            ca_pem: api.ca_pem().to_owned(),
            reviewer_jwt: api.reviewer_token(),
        },
    );
    bao.kubernetes_role("app", "team", "app-sa", "app");
}

/// Every publish reads Vault (no shared reads), with the workload's token cached, as during
/// rotation.
async fn latency(api: &ApiServer, bao: &OpenBao, iterations: usize) {
    seed(api, bao);
    let token = bao.bao(&["token", "create", "-policy=app", "-field=token"]);
    let driver = Driver::start(
        api,
        &[
            &format!("--vault-address={}", bao.addr),
            "--vault-read-cache-ttl=0s",
        ],
    )
    .await;
    println!(
        "vault publish latency, {iterations} volumes per row (OpenBao dev server on loopback)"
    );
    println!(
        "| objects | publish p50 | publish p99 | publish p50 / 1-object p50 | \
         plain reads one by one p50 | plain reads 8 in flight p50 |"
    );
    println!("|--:|--:|--:|--:|--:|--:|");
    let mut base = None;
    for size in SIZES {
        let class = format!("bench-{size}");
        api.insert(
            GROUP,
            "secretproviderclasses",
            spc(
                "team",
                &class,
                "vault",
                json!({"roleName": "app", "objects": objects(size)}),
            ),
        );
        let mut node = driver.node();
        let mut publishes = Vec::with_capacity(iterations);
        let mut sequential = Vec::with_capacity(iterations);
        let mut parallel = Vec::with_capacity(iterations);
        for i in 0..iterations {
            let mut pod = pod(size * 100_000 + i);
            pod.register(api, &class);
            let target = driver.target(&pod.uid, "secrets");
            let request = pod.publish_with_tokens(&target, &class, api, &["vault"]);
            let started = Instant::now();
            node.node_publish_volume(request).await.unwrap();
            publishes.push(started.elapsed());
            node.node_unpublish_volume(unpublish(&target))
                .await
                .unwrap();
            sequential.push(plain_reads(&bao.addr, token.trim(), size, 1).await);
            parallel.push(plain_reads(&bao.addr, token.trim(), size, 8).await);
        }
        publishes.sort();
        sequential.sort();
        parallel.sort();
        let p50 = percentile(&publishes, 0.5);
        let base = *base.get_or_insert(p50);
        println!(
            "| {size} | {} | {} | {:.2}x | {} | {} |",
            ms(p50),
            ms(percentile(&publishes, 0.99)),
            p50.as_secs_f64() / base.as_secs_f64(),
            ms(percentile(&sequential, 0.5)),
            ms(percentile(&parallel, 0.5)),
        );
    }
}

/// 50 pods of one service account mount the same 5-object class, ten at a time, within one
/// rotation window; OpenBao's audit log counts what arrives.
async fn backend_load(api: &ApiServer, bao: &OpenBao) {
    seed(api, bao);
    println!();
    println!(
        "requests received by OpenBao for {PODS} pods of one service account, one 5-object class"
    );
    println!("| read sharing | logins | reads | total | upstream design (login + reads per pod) |");
    println!("|---|--:|--:|--:|--:|");
    api.insert(
        GROUP,
        "secretproviderclasses",
        spc(
            "team",
            "five",
            "vault",
            json!({"roleName": "app", "objects": objects(5)}),
        ),
    );
    for (round, (label, ttl)) in [("30s (default)", "30s"), ("off (0s)", "0s")]
        .into_iter()
        .enumerate()
    {
        let driver = Driver::start(
            api,
            &[
                &format!("--vault-address={}", bao.addr),
                &format!("--vault-read-cache-ttl={ttl}"),
            ],
        )
        .await;
        let mark = bao.requests().len();
        let pods: Vec<Pod> = (0..PODS).map(|i| pod(900_000 + round * 1000 + i)).collect();
        driver.publish_rollout(api, &pods, "five", &["vault"]).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let requests = bao.requests().split_off(mark);
        let logins = requests
            .iter()
            .filter(|(_, p)| p.ends_with("/login"))
            .count();
        println!(
            "| {label} | {logins} | {} | {} | {} |",
            requests.len() - logins,
            requests.len(),
            PODS * (1 + 5)
        );
    }
}
