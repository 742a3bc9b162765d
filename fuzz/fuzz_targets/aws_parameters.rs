//! A class's parameters for the built-in aws provider. Input: the region on the first line,
//! the `objects` YAML, a line `---`, then one `key=value` parameter per line.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use secrets_store_csi_driver::limits;
use secrets_store_csi_driver::provider::aws::config;

fuzz_target!(|input: &[u8]| {
    let text = String::from_utf8_lossy(input);
    let (region, text) = text.split_once('\n').unwrap_or(("us-east-1", &text));
    let (objects, rest) = text.split_once("\n---\n").unwrap_or((text, ""));
    let mut parameters: BTreeMap<String, String> = rest
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    parameters.insert("objects".to_owned(), objects.to_owned());
    if let Ok(volume) = config::parse(&parameters, region, &Default::default()) {
        for object in &volume.objects {
            assert!(limits::check_file_path(&object.file).is_ok());
            for entry in &object.jmes {
                assert!(limits::check_file_path(&entry.alias).is_ok());
            }
        }
    }
});
