//! What a Vault server (or anything a class points at) answers, read for each encoding.
//! Input: a first line `<status> [secretKey]`, then the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use secrets_store_csi_driver::provider::vault::client::Reply;
use secrets_store_csi_driver::provider::vault::config::{Encoding, ObjectConfig, ReadRequest};
use secrets_store_csi_driver::provider::vault::read;
use secrets_store_csi_driver::redact::Secret;

fuzz_target!(|input: &[u8]| {
    let split = input
        .iter()
        .position(|b| *b == b'\n')
        .unwrap_or(input.len());
    let head = String::from_utf8_lossy(&input[..split]);
    let body = input.get(split + 1..).unwrap_or_default().to_vec();
    let mut words = head.split(' ');
    let status = words.next().and_then(|s| s.parse().ok()).unwrap_or(200);
    let key = words.next().map(str::to_owned);
    let reply = Reply {
        status,
        body: Secret::new(body.into()),
    };
    let Ok(response) = read::classify(reply) else {
        return;
    };
    for encoding in [Encoding::Utf8, Encoding::Base64, Encoding::Hex] {
        let object = ObjectConfig {
            name: "o".to_owned(),
            request: ReadRequest {
                method: "GET".to_owned(),
                path: "/v1/secret/data/x".to_owned(),
                query: None,
                body: None,
            },
            secret_key: key.clone(),
            encoding,
            mode: None,
        };
        if let Ok(contents) = read::contents(&object, &response) {
            // Go's escapes write one byte (`<`, a control character) as six (`\u003c`), and
            // the envelope adds its field names: no more than that.
            assert!(contents.len() <= response.len() * 6 + 128);
        }
    }
});
