//! The `mount` and `unmount` commands on the shipped quickstart, as a user runs them.

mod support;

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{DRIVER, mount_line};

const QUICKSTART_VALUES: [&str; 2] = ["quickstart-db-password", "quickstart-api-token"];

#[test]
fn mount_writes_the_quickstart_and_prints_no_values() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("quickstart");
    let root = nix::unistd::geteuid().is_root();
    let output = Command::new(DRIVER)
        .args(["mount", "--class", "examples/quickstart.yaml", "--target"])
        .arg(&target)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}{stderr}");
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    for (path, mode, size) in [
        ("api/token", "0640", "20"),
        ("db-password", "0644", "22"),
        ("tls.crt", "0644", "65"),
    ] {
        let row = rows
            .iter()
            .find(|r| r.first() == Some(&path))
            .unwrap_or_else(|| panic!("no {path} in\n{stdout}"));
        assert_eq!(&row[1..4], [mode, size, "B"], "{stdout}");
        assert_eq!(row[4].len(), 24, "a 96-bit keyed-hash version: {stdout}");
    }
    assert!(
        stdout.contains(if root { "on tmpfs" } else { "plain directory" }),
        "{stdout}"
    );
    for value in QUICKSTART_VALUES {
        assert!(
            !stdout.contains(value) && !stderr.contains(value),
            "printed a value"
        );
    }
    assert_eq!(
        std::fs::read_to_string(target.join("api/token")).unwrap(),
        "quickstart-api-token"
    );
    assert_eq!(mount_line(&target).is_some(), root);

    let output = Command::new(DRIVER)
        .args(["unmount", "--target"])
        .arg(&target)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!target.exists());
    assert!(mount_line(&target).is_none());
}

#[test]
fn mount_watch_reports_changes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("s.yaml"), "a: one\nb: two\n").unwrap();
    let class = dir.path().join("class.yaml");
    std::fs::write(
        &class,
        "apiVersion: secrets-store.csi.x-k8s.io/v1\nkind: SecretProviderClass\nmetadata:\n  name: w\n\
         spec:\n  provider: local\n  parameters:\n    source: s.yaml\n",
    )
    .unwrap();
    let target = dir.path().join("out");
    let mut child = Command::new(DRIVER)
        .args([
            "mount",
            "--watch",
            "--plain-dir",
            "--rotation-poll-interval=200ms",
            "--class",
        ])
        .arg(&class)
        .arg("--target")
        .arg(&target)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    let started = Instant::now();
    let mut changed_source = false;
    while let Some(Ok(line)) = lines.next() {
        seen.push(line.clone());
        if line.starts_with("watching") && !changed_source {
            std::fs::write(dir.path().join("s.yaml"), "a: uno\n").unwrap();
            changed_source = true;
        }
        if line.starts_with("removed b") || started.elapsed() > Duration::from_secs(10) {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = seen.join("\n");
    assert!(text.contains("changed a"), "{text}");
    assert!(text.contains("removed b"), "{text}");
    assert!(
        !text.contains("uno") && !text.contains("two"),
        "printed a value: {text}"
    );
    assert_eq!(std::fs::read_to_string(target.join("a")).unwrap(), "uno");
    assert!(!target.join("b").exists());
}
