//! The PEM/DER splitter behind `kubernetes.io/tls` Secrets.
#![no_main]

use libfuzzer_sys::fuzz_target;
use secrets_store_csi_driver::sync::tls;

fuzz_target!(|bundle: &[u8]| {
    let _ = tls::certificates(bundle);
    let _ = tls::private_key(bundle);
});
