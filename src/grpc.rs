//! The unix-socket gRPC plumbing shared by the CSI endpoint, the provider plugin client and
//! the provider server: endpoint parsing, binding over a stale socket, and the caller's
//! `grpc-timeout` deadline.

use std::io;
use std::os::unix::fs::FileTypeExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::UnixListener;

use crate::limits::MAX_GRPC_TIMEOUT_DIGITS;

/// A unix-socket endpoint (`--endpoint`) cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// Not a `unix://` address or an absolute path.
    #[error("invalid endpoint {0:?}: use unix:///path/to/csi.sock")]
    Invalid(String),
    /// Something that is not a socket is in the way; it is never deleted.
    #[error("refusing to replace {}: it exists and is not a socket; remove it or choose another --endpoint", .0.display())]
    NotASocket(PathBuf),
    /// Binding failed.
    #[error("failed to listen on {}: {source}", path.display())]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// Parses `--endpoint` as upstream does: `unix:///csi/csi.sock`, `unix://tmp/csi.sock`
/// (relative form, made absolute) or a plain absolute path.
pub fn socket_path(endpoint: &str) -> Result<PathBuf, EndpointError> {
    let lower = endpoint.to_ascii_lowercase();
    let rest = if lower.starts_with("unix://") {
        &endpoint["unix://".len()..]
    } else if lower.starts_with("unix:") {
        &endpoint["unix:".len()..]
    } else if endpoint.starts_with('/') {
        endpoint
    } else {
        return Err(EndpointError::Invalid(endpoint.to_owned()));
    };
    let trimmed = rest.trim_start_matches('/');
    if trimmed.is_empty() {
        return Err(EndpointError::Invalid(endpoint.to_owned()));
    }
    Ok(Path::new("/").join(trimmed))
}

/// Binds the socket, replacing a stale socket file left by a previous run.
pub fn bind(path: &Path) -> Result<UnixListener, EndpointError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(|source| EndpointError::Bind {
                path: path.to_owned(),
                source,
            })?;
        }
        Ok(_) => return Err(EndpointError::NotASocket(path.to_owned())),
        Err(_) => {}
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| EndpointError::Bind {
            path: path.to_owned(),
            source,
        })?;
    }
    UnixListener::bind(path).map_err(|source| EndpointError::Bind {
        path: path.to_owned(),
        source,
    })
}

/// The caller's deadline from the `grpc-timeout` header (e.g. `119999m`), if any.
pub fn grpc_timeout(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    parse_grpc_timeout(metadata.get("grpc-timeout")?.to_str().ok()?)
}

/// A `grpc-timeout` value: at most 8 ASCII digits and a unit (`H M S m u n`), as the gRPC
/// spec allows; anything else is no deadline.
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if !value.is_ascii() {
        return None;
    }
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty()
        || digits.len() > MAX_GRPC_TIMEOUT_DIGITS
        || !digits.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.checked_mul(3600)?),
        "M" => Duration::from_secs(amount.checked_mul(60)?),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_as_upstream() {
        assert_eq!(
            socket_path("unix:///csi/csi.sock").unwrap(),
            Path::new("/csi/csi.sock")
        );
        assert_eq!(
            socket_path("unix://tmp/csi.sock").unwrap(),
            Path::new("/tmp/csi.sock")
        );
        assert_eq!(socket_path("UNIX:///a.sock").unwrap(), Path::new("/a.sock"));
        assert_eq!(
            socket_path("/run/csi.sock").unwrap(),
            Path::new("/run/csi.sock")
        );
        for bad in ["tcp://127.0.0.1:10000", "csi.sock", "unix://", ""] {
            assert!(socket_path(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced_and_anything_else_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("csi.sock");
        drop(bind(&path).unwrap());
        assert!(
            path.exists(),
            "the first listener leaves its socket file behind"
        );
        drop(bind(&path).unwrap());
        let file = dir.path().join("file");
        std::fs::write(&file, "keep me").unwrap();
        assert!(matches!(bind(&file), Err(EndpointError::NotASocket(_))));
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
    }

    #[test]
    fn grpc_timeouts_parse() {
        let mut metadata = tonic::metadata::MetadataMap::new();
        assert_eq!(grpc_timeout(&metadata), None);
        metadata.insert("grpc-timeout", "1500m".parse().unwrap());
        assert_eq!(grpc_timeout(&metadata), Some(Duration::from_millis(1500)));
        metadata.insert("grpc-timeout", "2M".parse().unwrap());
        assert_eq!(grpc_timeout(&metadata), Some(Duration::from_secs(120)));
        assert_eq!(
            parse_grpc_timeout("99999999H"),
            Some(Duration::from_secs(99_999_999 * 3600))
        );
        // What once overflowed a multiplication, and what the spec does not allow.
        for bad in [
            "18446744073709551615H",
            "123456789S",
            "+5S",
            "5",
            "",
            "S",
            "-1m",
            "5x",
        ] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
    }
}
