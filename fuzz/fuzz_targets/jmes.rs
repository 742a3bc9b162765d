//! `jmesPath` expressions against a JSON secret: compiled only within the bounds. Input: the
//! expression on the first line, then the secret.
#![no_main]

use libfuzzer_sys::fuzz_target;
use secrets_store_csi_driver::provider::aws::config::JmesEntry;
use secrets_store_csi_driver::provider::aws::jmes;

fuzz_target!(|input: &[u8]| {
    let split = input
        .iter()
        .position(|b| *b == b'\n')
        .unwrap_or(input.len());
    let path = String::from_utf8_lossy(&input[..split]).into_owned();
    let secret = input.get(split + 1..).unwrap_or_default();
    let _ = jmes::check(&path);
    let entry = JmesEntry {
        path,
        alias: "out".to_owned(),
        mode: None,
    };
    let _ = jmes::extract("o", secret, &[entry]);
});
