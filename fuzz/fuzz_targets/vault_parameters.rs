//! A class's parameters for the built-in vault provider. Input: the `objects` YAML, a line
//! `---`, then one `key=value` parameter per line.
#![no_main]

use std::collections::BTreeMap;
use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use secrets_store_csi_driver::provider::vault::config::{self, Defaults, TlsPolicy};

fuzz_target!(|input: &[u8]| {
    let text = String::from_utf8_lossy(input);
    let (objects, rest) = text.split_once("\n---\n").unwrap_or((&text, ""));
    let mut parameters: BTreeMap<String, String> = rest
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    parameters.insert("objects".to_owned(), objects.to_owned());
    let defaults = Defaults {
        tls_policy: TlsPolicy {
            allowed_dirs: Some(vec![PathBuf::from("/etc/vault-tls")]),
            forbidden_dirs: vec![PathBuf::from("/var/lib/kubelet")],
        },
        ..Defaults::default()
    };
    if let Ok(volume) = config::parse(&parameters, &Default::default(), &defaults) {
        for file in [
            &volume.tls.ca_cert,
            &volume.tls.ca_directory,
            &volume.tls.client_cert,
            &volume.tls.client_key,
        ]
        .into_iter()
        .flatten()
        {
            assert!(file.path.starts_with("/etc/vault-tls"));
        }
        for object in &volume.objects {
            assert!(object.request.path.starts_with("/v1/"));
        }
    }
});
