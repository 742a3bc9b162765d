//! The `grpc-timeout` header of a CSI call.
#![no_main]

use libfuzzer_sys::fuzz_target;
use secrets_store_csi_driver::grpc::parse_grpc_timeout;

fuzz_target!(|value: &[u8]| {
    let value = String::from_utf8_lossy(value);
    let _ = parse_grpc_timeout(&value);
});
