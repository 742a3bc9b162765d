//! The upstream providers as the oracle: `tests/fixtures/upstream/providers.json` holds what
//! vault-csi-provider and ASCP answered for each class of a corpus (files, bytes and modes as
//! upstream's writer writes them, or a failure), recorded by running them against OpenBao and
//! moto seeded with the fixture's `seed`. The Go module proxy serves neither, so CI cannot
//! build them; the recording is what they did. [`compare`] sends the same classes to our
//! provider on its socket and reports every case that differs from the recording, except those
//! the fixture marks as a deliberate `difference`, which must differ and be in the README.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use secrets_store_csi_driver::proto::v1alpha1 as pb;
use serde_json::{Map, Value, json};

use super::{DRIVER, Pod, uds_channel, wait_for_socket};

/// The fixture's section for one provider (`vault` or `aws`).
pub fn section(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/upstream/providers.json");
    let all: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    all[name].clone()
}

/// Runs `provider <name>` on `socket` with its logs in `log` (a pipe could fill and stall it).
pub async fn serve(name: &str, socket: &Path, log: &Path, args: &[&str]) -> Child {
    let child = Command::new(DRIVER)
        .args([
            "provider",
            name,
            &format!("--endpoint=unix://{}", socket.display()),
        ])
        .args(args)
        .stderr(Stdio::from(std::fs::File::create(log).unwrap()))
        .spawn()
        .unwrap();
    wait_for_socket(socket).await;
    child
}

/// Stops the provider, then asserts that no class differed and that its log holds none of
/// `values`.
pub fn assert_no_mismatches(
    mut server: Child,
    mismatches: &[String],
    corpus: &Value,
    log: &Path,
    values: &[&str],
) {
    server.kill().unwrap();
    server.wait().unwrap();
    assert!(
        mismatches.is_empty(),
        "{} of {} classes differ from {}:\n{}",
        mismatches.len(),
        corpus["cases"].as_object().unwrap().len(),
        corpus["peer"],
        mismatches.join("\n")
    );
    let logs = std::fs::read_to_string(log).unwrap();
    for value in values {
        assert!(!logs.contains(value), "the provider logged {value}");
    }
}

/// What a mount gave, in the fixture's form.
fn outcome(response: Result<pb::MountResponse, tonic::Status>) -> Value {
    let response = match response {
        Ok(r) if r.error.as_ref().is_none_or(|e| e.code.is_empty()) => r,
        _ => return json!({"outcome": "error"}),
    };
    let files: Map<String, Value> = response
        .files
        .into_iter()
        .map(|file| {
            let text = String::from_utf8_lossy(&file.contents);
            let text = blank(&blank(&text, "request_id", "R"), "created_time", "T");
            let mode = format!("0o{:o}", file.mode.cast_unsigned() & 0o777);
            (file.path, json!({"mode": mode, "contents": text}))
        })
        .collect();
    json!({"outcome": "ok", "files": files})
}

/// `"field":"<anything>"` with the value replaced, as the recording normalized it.
fn blank(text: &str, field: &str, with: &str) -> String {
    let marker = format!("\"{field}\":\"");
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(&marker) {
        out.push_str(&rest[..at + marker.len()]);
        out.push_str(with);
        rest = &rest[at + marker.len()..];
        rest = &rest[rest.find('"').unwrap_or(rest.len())..];
    }
    out.push_str(rest);
    out
}

/// Sends every case of `section` to the provider on `socket` as pod `pod` with `tokens`
/// (kubelet's JSON), `extra` added to each class; returns the mismatches, each a line.
pub async fn compare(
    socket: &Path,
    section: &Value,
    pod: &Pod,
    tokens: &str,
    extra: &BTreeMap<&str, String>,
) -> Vec<String> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let differences = readme
        .split("## Differences from upstream")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .unwrap_or_default()
        .to_owned();
    let mut client =
        pb::csi_driver_provider_client::CsiDriverProviderClient::new(uds_channel(socket));
    let mut mismatches = Vec::new();
    for (name, case) in section["cases"].as_object().unwrap() {
        let mut attributes: Map<String, Value> = case["parameters"].as_object().unwrap().clone();
        for (key, value) in extra {
            attributes.insert((*key).to_owned(), json!(value));
        }
        for (key, value) in [
            ("csi.storage.k8s.io/pod.name", pod.name.as_str()),
            ("csi.storage.k8s.io/pod.namespace", &pod.namespace),
            ("csi.storage.k8s.io/pod.uid", &pod.uid),
            (
                "csi.storage.k8s.io/serviceAccount.name",
                &pod.service_account,
            ),
            ("csi.storage.k8s.io/serviceAccount.tokens", tokens),
            ("secretProviderClass", name),
        ] {
            attributes.insert(key.to_owned(), json!(value));
        }
        let request = pb::MountRequest {
            attributes: Value::Object(attributes).to_string(),
            secrets: "null".to_owned(),
            target_path: "/tmp/unused".to_owned(),
            permission: "420".to_owned(),
            current_object_version: Vec::new(),
        };
        let ours = outcome(client.mount(request).await.map(tonic::Response::into_inner));
        let upstream = &case["upstream"];
        match case["difference"].as_str() {
            None if ours != *upstream => {
                mismatches.push(format!("{name}: upstream {upstream}\n    ours {ours}"))
            }
            Some(row) if ours == *upstream => mismatches.push(format!(
                "{name}: listed as a difference ({row}) but now the same"
            )),
            Some(row) if !differences.contains(row) => mismatches.push(format!(
                "{name}: differs from upstream, and the README's differences lack {row:?}"
            )),
            _ => {}
        }
    }
    mismatches
}
