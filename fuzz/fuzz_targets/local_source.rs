//! The YAML/JSON source files of the `local` provider.
#![no_main]

use libfuzzer_sys::fuzz_target;
use secrets_store_csi_driver::provider::local;

fuzz_target!(|text: &[u8]| {
    let _ = local::parse_source(text, std::path::Path::new("source.yaml"));
});
