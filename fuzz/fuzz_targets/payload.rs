//! Provider answers: file paths and modes, as any plugin may send them. Input: one file per
//! line, `<mode in decimal> <path>`; the contents are the line's bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use secrets_store_csi_driver::limits;
use secrets_store_csi_driver::provider::ProviderFile;
use secrets_store_csi_driver::redact::Secret;
use secrets_store_csi_driver::volume::Payload;

fuzz_target!(|input: &[u8]| {
    let text = String::from_utf8_lossy(input);
    let files: Vec<ProviderFile> = text
        .split('\n')
        .map(|line| {
            let (mode, path) = line.split_once(' ').unwrap_or(("420", line));
            let _ = limits::check_file_path(path);
            ProviderFile {
                path: path.to_owned(),
                mode: mode.parse().unwrap_or(u32::MAX),
                contents: Secret::new(line.as_bytes().to_vec()),
            }
        })
        .collect();
    if let Ok(payload) = Payload::validate(files, 1 << 16) {
        for (path, file) in payload.files() {
            assert!(path.is_relative());
            assert!(file.mode <= 0o777);
            assert!(limits::check_file_path(&path.to_string_lossy()).is_ok());
        }
    }
});
