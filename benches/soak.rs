//! Soak: many publish/unpublish cycles and rotations through the real CSI socket, with a
//! healthy backend and with one failing half the time, sampling what would leak (mounts, open
//! file descriptors, threads, memory) at the start, the middle and the end. Needs root.
//!
//! Run: `cargo bench --bench soak` (10,000 cycles and 1,000 rotations per backend), or with
//! `BENCH_ITERATIONS=n` for n cycles and n/10 rotations (CI's smoke run).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Instant;

use serde_json::json;
use support::provider::{Behaviour, FakeProvider};
use support::{ApiServer, Driver, Pod, TestApi, mounts_under, spc, unpublish};

const GROUP: &str = "secrets-store.csi.x-k8s.io";

/// One sample of what the driver holds.
struct Sample {
    at: &'static str,
    done: usize,
    mounts: usize,
    fds: usize,
    threads: usize,
    rss_kib: u64,
}

fn sample(driver: &Driver, at: &'static str, done: usize) -> Sample {
    Sample {
        at,
        done,
        mounts: mounts_under(driver.dir.path()).len(),
        fds: driver.open_fds(),
        threads: driver.threads(),
        rss_kib: driver.rss_kib(),
    }
}

/// Publishes and unpublishes `cycles` fresh volumes of `class`, each for a pod that exists
/// and is deleted afterwards, as kubelet sees pods come and go (the garbage collector then
/// removes the pod's status record); failed publishes (the flaky backend) count too, as their
/// cleanup is what could leak.
async fn cycles(
    driver: &Driver,
    api: &dyn TestApi,
    class: &str,
    cycles: usize,
) -> (Vec<Sample>, usize) {
    let mut node = driver.node();
    let mut samples = vec![sample(driver, "start", 0)];
    let mut failed = 0;
    for i in 0..cycles {
        let mut pod = Pod::new(&format!("{class}-{i}"), "soak");
        pod.create_in(api, "v", class, None);
        let target = driver.target(&pod.uid, "v");
        if node
            .node_publish_volume(pod.publish(&target, class))
            .await
            .is_err()
        {
            failed += 1;
        }
        node.node_unpublish_volume(unpublish(&target))
            .await
            .unwrap();
        api.delete("", "pods", "soak", &pod.name);
        if i + 1 == cycles / 2 {
            samples.push(sample(driver, "middle", i + 1));
        }
    }
    samples.push(sample(driver, "end", cycles));
    (samples, failed)
}

/// Republishes one mounted volume `rotations` times with rotation due each time; `change`
/// gives the backend a new value first.
async fn rotations(
    driver: &Driver,
    api: &dyn TestApi,
    class: &str,
    rotations: usize,
    mut change: impl FnMut(usize),
) -> Vec<Sample> {
    let mut node = driver.node();
    let mut pod = Pod::new(&format!("{class}-rotating"), "soak");
    pod.create_in(api, "v", class, None);
    let target = driver.target(&pod.uid, "v");
    change(0);
    node.node_publish_volume(pod.publish(&target, class))
        .await
        .unwrap();
    let mut samples = vec![sample(driver, "start", 0)];
    for i in 0..rotations {
        change(i + 1);
        // A failed rotation keeps the old files and still answers OK.
        node.node_publish_volume(pod.publish(&target, class))
            .await
            .unwrap();
        if i + 1 == rotations / 2 {
            samples.push(sample(driver, "middle", i + 1));
        }
    }
    samples.push(sample(driver, "end", rotations));
    node.node_unpublish_volume(unpublish(&target))
        .await
        .unwrap();
    api.delete("", "pods", "soak", &pod.name);
    samples
}

fn table(title: &str, samples: &[Sample]) {
    println!("\n{title}");
    println!("| at | done | mounts | open fds | threads | RSS |");
    println!("|----|-----:|-------:|---------:|--------:|----:|");
    for s in samples {
        println!(
            "| {} | {} | {} | {} | {} | {:.1} MiB |",
            s.at,
            s.done,
            s.mounts,
            s.fds,
            s.threads,
            s.rss_kib as f64 / 1024.0
        );
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let Some(n) = support::bench_iterations("soak", 10_000) else {
        return;
    };
    let rotation_count = (n / 10).max(2);
    let Some(api) = ApiServer::start().await else {
        return;
    };
    let driver = Driver::start(
        &api,
        &[
            "-v=0",
            "--enable-secret-rotation",
            "--rotation-poll-interval=1ms",
        ],
    )
    .await;
    let source = driver.local_root.join("soak.yaml");
    std::fs::write(&source, "a: first\nb: second\n").unwrap();
    api.insert(
        GROUP,
        "secretproviderclasses",
        spc(
            "soak",
            "healthy",
            "local",
            json!({"source": "soak.yaml", "objects": "- objectName: a\n- objectName: b\n  objectAlias: nested/b\n"}),
        ),
    );
    let flaky = FakeProvider::start(
        &driver.provider_dir,
        "flaky",
        Behaviour {
            files: vec![
                ("a".into(), 0o644, b"first".to_vec()),
                ("nested/b".into(), 0o600, b"second".to_vec()),
            ],
            versions: vec![("a".into(), "1".into())],
            fail_every_other: true,
            ..Default::default()
        },
    )
    .await;
    api.insert(
        GROUP,
        "secretproviderclasses",
        spc("soak", "flaky", "flaky", json!({"k": "v"})),
    );

    let started = Instant::now();
    let (healthy_cycles, healthy_failed) = cycles(&driver, &api, "healthy", n).await;
    let (flaky_cycles, flaky_failed) = cycles(&driver, &api, "flaky", n).await;
    let healthy_rotations = rotations(&driver, &api, "healthy", rotation_count, |i| {
        std::fs::write(&source, format!("a: value-{i}\nb: second\n")).unwrap();
    })
    .await;
    let flaky_rotations = rotations(&driver, &api, "flaky", rotation_count, |i| {
        flaky.set(Behaviour {
            files: vec![("a".into(), 0o644, format!("value-{i}").into_bytes())],
            versions: vec![("a".into(), i.to_string())],
            fail_every_other: true,
            ..Default::default()
        });
    })
    .await;
    let elapsed = started.elapsed();

    table(
        &format!("{n} publish/unpublish cycles, healthy local backend ({healthy_failed} failed)"),
        &healthy_cycles,
    );
    table(
        &format!(
            "{n} publish/unpublish cycles, plugin failing half the time ({flaky_failed} failed)"
        ),
        &flaky_cycles,
    );
    table(
        &format!(
            "{rotation_count} rotations of one volume, healthy local backend (value changes each time)"
        ),
        &healthy_rotations,
    );
    table(
        &format!("{rotation_count} rotations of one volume, plugin failing half the time"),
        &flaky_rotations,
    );
    println!("\nsoak took {:.1} s", elapsed.as_secs_f64());
    let end = |s: &[Sample]| s.last().map(|s| (s.mounts, s.fds, s.threads)).unwrap();
    assert_eq!(healthy_failed, 0);
    assert!(flaky_failed >= n / 2 - 1, "{flaky_failed} of {n} failed");
    for samples in [&healthy_cycles, &flaky_cycles] {
        assert_eq!(end(samples).0, 0, "mounts left behind");
    }
}
