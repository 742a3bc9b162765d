//! Publish/unpublish latency through the real CSI socket with the `local` provider, and the
//! node process's memory, printed as a table. Needs root (tmpfs).
//!
//! Run: `cargo bench --profile dev --bench publish` (or `--release` for production figures).

#[path = "../tests/support/mod.rs"]
mod support;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde_json::json;
use support::{ApiServer, Driver, Pod, TestApi, ms, percentile, spc, unpublish};

const OBJECTS: usize = 50;
const VOLUMES_FOR_RSS: usize = 250;

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let Some(iterations) = support::bench_iterations("publish", 200) else {
        return;
    };
    let Some(api) = ApiServer::start().await else {
        return;
    };
    let driver = Driver::start(&api, &["-v=0"]).await;
    let mut source = String::new();
    for i in 0..OBJECTS {
        writeln!(source, "object-{i:02}: {}", "s".repeat(64)).unwrap();
    }
    std::fs::write(driver.local_root.join("bench.yaml"), source).unwrap();
    // The same ten objects with two templated files built from all of them: what rendering
    // adds to a publish.
    let templates = "- fileName: app.env\n  template: |\n    \
        {% for name in files %}{{ name | upper | replace('-', '_') }}={{ files[name] }}\n    \
        {% endfor %}\n\
        - fileName: app.json\n  template: '{{ files | tojson }}'\n";
    let classes: Vec<(String, String, usize, Option<&str>)> = [1, 10, 50]
        .map(|n| (n.to_string(), format!("bench-{n}"), n, None))
        .into_iter()
        .chain([(
            "10 + 2 templated".to_owned(),
            "bench-templated".to_owned(),
            10,
            Some(templates),
        )])
        .collect();
    for (_, class, n, templates) in &classes {
        let objects: String = (0..*n)
            .map(|i| format!("- objectName: object-{i:02}\n"))
            .collect();
        let mut parameters = json!({"source": "bench.yaml", "objects": objects});
        if let Some(templates) = templates {
            parameters["secrets-store.csi.k8s.io/templates"] = json!(templates);
        }
        api.insert(
            "secrets-store.csi.x-k8s.io",
            "secretproviderclasses",
            spc("bench", class, "local", parameters),
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_rss = driver.rss_kib();

    let mut node = driver.node();
    let mut rows = Vec::new();
    for (label, class, _, _) in &classes {
        let mut publish = Vec::with_capacity(iterations);
        let mut remove = Vec::with_capacity(iterations);
        for i in 0..iterations {
            let mut pod = Pod::new(&format!("{class}-{i}"), "bench");
            pod.create_in(&api, "v", class, None);
            let target = driver.target(&pod.uid, "v");
            let started = Instant::now();
            node.node_publish_volume(pod.publish(&target, class))
                .await
                .unwrap();
            publish.push(started.elapsed());
            let started = Instant::now();
            node.node_unpublish_volume(unpublish(&target))
                .await
                .unwrap();
            remove.push(started.elapsed());
        }
        publish.sort();
        remove.sort();
        rows.push((
            label,
            percentile(&publish, 0.5),
            percentile(&publish, 0.99),
            percentile(&remove, 0.5),
        ));
    }

    let pods: Vec<Pod> = (0..VOLUMES_FOR_RSS)
        .map(|i| {
            let mut pod = Pod::new(&format!("rss-{i}"), "bench");
            pod.create_in(&api, "v", "bench-10", None);
            pod
        })
        .collect();
    for pod in &pods {
        node.node_publish_volume(pod.publish(&driver.target(&pod.uid, "v"), "bench-10"))
            .await
            .unwrap();
    }
    let loaded_rss = driver.rss_kib();
    for pod in &pods {
        node.node_unpublish_volume(unpublish(&driver.target(&pod.uid, "v")))
            .await
            .unwrap();
    }

    println!("\npublish through the CSI socket, local provider ({iterations} volumes per row)");
    println!("| objects | publish p50 | publish p99 | unpublish p50 |");
    println!("|--------:|------------:|------------:|--------------:|");
    for (label, p50, p99, unpublish_p50) in rows {
        println!(
            "| {label:>7} | {:>11} | {:>11} | {:>13} |",
            ms(p50),
            ms(p99),
            ms(unpublish_p50)
        );
    }
    println!("\nnode process memory (VmRSS)");
    println!("| state | RSS |");
    println!("|-------|----:|");
    println!("| idle | {:.1} MiB |", idle_rss as f64 / 1024.0);
    println!(
        "| {VOLUMES_FOR_RSS} volumes mounted (10 objects each) | {:.1} MiB |",
        loaded_rss as f64 / 1024.0
    );
}
