//! SecretProviderClass parameters of HashiCorp's vault-csi-provider, parsed strictly: every
//! malformed value fails before any network call, naming the object and field.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

use serde::de::MapAccess;

use super::NAME;
use crate::limits;
use crate::pod::PodInfo;
use crate::provider::yaml::{self, FoldedFields};
use crate::provider::{ProviderError, parse_go_bool};

/// The parameters this provider reads, which only the class may set (see
/// [`crate::provider::Provider::class_parameters`]).
pub const PARAMETERS: &[&str] = &[
    "roleName",
    "vaultAddress",
    "vaultNamespace",
    "vaultKubernetesMountPath",
    "vaultAuthMountPath",
    "audience",
    "vaultCACertPath",
    "vaultCADirectory",
    "vaultTLSServerName",
    "vaultSkipTLSVerify",
    "vaultTLSClientCertPath",
    "vaultTLSClientKeyPath",
    "objects",
];

/// Defaults for what a SecretProviderClass leaves out (flags, then `VAULT_*` environment).
#[derive(Debug, Clone)]
pub struct Defaults {
    /// Vault address when `vaultAddress` is not set.
    pub address: String,
    /// Auth mount when neither mount parameter is set.
    pub auth_mount: String,
    /// Enterprise/OpenBao namespace when `vaultNamespace` is not set.
    pub namespace: Option<String>,
    /// TLS settings that SPC parameters override one by one.
    pub tls: TlsConfig,
    /// Where the TLS files a class names may be.
    pub tls_policy: TlsPolicy,
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            address: "https://127.0.0.1:8200".to_owned(),
            auth_mount: "kubernetes".to_owned(),
            namespace: None,
            tls: TlsConfig::default(),
            tls_policy: TlsPolicy::default(),
        }
    }
}

/// How to reach Vault over TLS; also the key of the HTTP client pool.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct TlsConfig {
    /// PEM bundle of CAs to trust instead of the system roots.
    pub ca_cert: Option<TlsFile>,
    /// Directory of PEM CAs to trust instead of the system roots.
    pub ca_directory: Option<TlsFile>,
    /// Name to verify the server certificate against (and send as SNI).
    pub server_name: Option<String>,
    /// Accept any server certificate. For tests only.
    pub skip_verify: bool,
    /// Client certificate (PEM) for mutual TLS.
    pub client_cert: Option<TlsFile>,
    /// Client key (PEM) for mutual TLS.
    pub client_key: Option<TlsFile>,
}

/// A TLS file or directory, and whether a class named it (then the policy applies) or the
/// operator did (a flag).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TlsFile {
    /// The path.
    pub path: PathBuf,
    /// Named by a SecretProviderClass.
    pub from_class: bool,
}

impl TlsFile {
    /// A path the operator configured.
    pub fn operator(path: PathBuf) -> Self {
        Self {
            path,
            from_class: false,
        }
    }
}

/// Where the TLS files a class names may be. The driver reads them as root, so on a node
/// they must be in directories the operator chose, and never below kubelet's root, where
/// other pods' volumes are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct TlsPolicy {
    /// Directories a class's TLS files must be in (canonical); `None` allows any path (the
    /// `mount` command, run by the class's own author).
    pub allowed_dirs: Option<Vec<PathBuf>>,
    /// Directories never read for a class, whatever is allowed (canonical and as given).
    pub forbidden_dirs: Vec<PathBuf>,
}

impl TlsPolicy {
    /// Checks a class's path before anything is read, so a refusal tells nothing about what
    /// exists outside the allowed directories.
    pub fn check_class_path(&self, parameter: &str, path: &str) -> Result<TlsFile, String> {
        let path = Path::new(path);
        let clean = path.is_absolute()
            && path
                .components()
                .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
        if !clean {
            return Err(format!(
                "{parameter} {path:?} must be an absolute path without '.' or '..' elements"
            ));
        }
        self.check_inside(parameter, path)?;
        Ok(TlsFile {
            path: path.to_owned(),
            from_class: true,
        })
    }

    /// Whether `path` (as named, or resolved) is somewhere a class may read.
    pub fn check_inside(&self, parameter: &str, path: &Path) -> Result<(), String> {
        let forbidden = self.forbidden_dirs.iter().any(|dir| path.starts_with(dir));
        let allowed = match &self.allowed_dirs {
            None => true,
            Some(dirs) => dirs.iter().any(|dir| path.starts_with(dir)),
        };
        if allowed && !forbidden {
            return Ok(());
        }
        let dirs = match &self.allowed_dirs {
            Some(dirs) if !dirs.is_empty() => dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            _ => "none".to_owned(),
        };
        Err(format!(
            "{parameter} {path:?} is not in a directory the driver allows classes to name \
             (allowed: {dirs}); the cluster operator mounts TLS files into the driver and lists \
             their directories in --vault-tls-allowed-dirs (Helm value vault.tls.allowedDirs)"
        ))
    }
}

/// One volume's Vault settings.
#[derive(Debug, Clone)]
pub struct VolumeConfig {
    /// Base address, without a trailing slash.
    pub address: String,
    /// `X-Vault-Namespace`, if any.
    pub namespace: Option<String>,
    /// Auth mount path, without `auth/` and slashes.
    pub auth_mount: String,
    /// Vault role to log in as.
    pub role: Option<String>,
    /// Which of the pod's tokens to present.
    pub audience: String,
    /// TLS settings.
    pub tls: TlsConfig,
    /// The pod.
    pub pod: PodInfo,
    /// Objects, in SPC order.
    pub objects: Vec<ObjectConfig>,
}

/// File contents encoding of a value picked with `secretKey`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// Written as is.
    Utf8,
    /// Standard base64, decoded before writing.
    Base64,
    /// Hex, decoded before writing.
    Hex,
}

/// One entry of `objects`.
#[derive(Debug, Clone)]
pub struct ObjectConfig {
    /// File name, and the object version id.
    pub name: String,
    /// The HTTP request that reads it.
    pub request: ReadRequest,
    /// Key inside the response data; `None` writes the whole response JSON.
    pub secret_key: Option<String>,
    /// How to decode the picked value.
    pub encoding: Encoding,
    /// File mode; `None` inherits the volume's default.
    pub mode: Option<u32>,
}

/// A Vault API request; equal requests within one mount are sent once.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReadRequest {
    /// HTTP method, upper case.
    pub method: String,
    /// `/v1/...` path.
    pub path: String,
    /// Raw query string, without `?`.
    pub query: Option<String>,
    /// JSON request body from `secretArgs`.
    pub body: Option<String>,
}

impl ReadRequest {
    /// `path?query`, as sent.
    pub fn path_and_query(&self) -> String {
        match &self.query {
            Some(query) => format!("{}?{query}", self.path),
            None => self.path.clone(),
        }
    }
}

#[derive(Debug, Default)]
struct RawObject {
    object_name: Option<String>,
    secret_path: Option<String>,
    secret_key: Option<String>,
    method: Option<String>,
    secret_args: Option<serde_json::Map<String, serde_json::Value>>,
    encoding: Option<String>,
    file_permission: Option<String>,
    /// Keys vault-csi-provider would ignore too; the first few are logged.
    unknown: Vec<String>,
}

/// Unknown keys of one object named in the warning.
const LOGGED_UNKNOWN_KEYS: usize = 8;

impl FoldedFields for RawObject {
    const FIELDS: &'static [&'static str] = &[
        "objectName",
        "secretPath",
        "secretKey",
        "method",
        "secretArgs",
        "encoding",
        "filePermission",
    ];
    const EXPECTING: &'static str = "an objects entry";
    const IGNORE_CASE: bool = false;
    fn set<'de, A: MapAccess<'de>>(&mut self, field: usize, map: &mut A) -> Result<(), A::Error> {
        match field {
            0 => self.object_name = map.next_value()?,
            1 => self.secret_path = map.next_value()?,
            2 => self.secret_key = map.next_value()?,
            3 => self.method = map.next_value()?,
            4 => self.secret_args = map.next_value()?,
            5 => self.encoding = map.next_value()?,
            _ => self.file_permission = map.next_value()?,
        }
        Ok(())
    }
    fn unknown(&mut self, key: String) {
        if self.unknown.len() < LOGGED_UNKNOWN_KEYS {
            let shown: String = key.chars().take(64).collect();
            self.unknown.push(shown);
        }
    }
}

yaml::folded_deserialize!(RawObject);

fn invalid(message: String) -> ProviderError {
    ProviderError::InvalidParameters {
        provider: NAME.to_owned(),
        message,
    }
}

/// Parses one volume's parameters (SPC parameters merged with kubelet's attributes).
pub fn parse(
    parameters: &BTreeMap<String, String>,
    pod: &PodInfo,
    defaults: &Defaults,
) -> Result<VolumeConfig, ProviderError> {
    let get = |key: &str| {
        parameters
            .get(key)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    };
    let auth_mount = match (get("vaultKubernetesMountPath"), get("vaultAuthMountPath")) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "cannot set both vaultKubernetesMountPath and vaultAuthMountPath; keep vaultAuthMountPath"
                    .to_owned(),
            ));
        }
        (Some(mount), None) | (None, Some(mount)) => mount,
        (None, None) => defaults.auth_mount.as_str(),
    };
    let auth_mount = auth_mount.trim_matches('/');
    let auth_mount = auth_mount
        .strip_prefix("auth/")
        .unwrap_or(auth_mount)
        .to_owned();
    if auth_mount.is_empty()
        || auth_mount
            .split('/')
            .any(|part| part.is_empty() || part == "..")
    {
        return Err(invalid(format!(
            "auth mount path {auth_mount:?} is not a Vault mount path such as \"kubernetes\" or \"jwt\""
        )));
    }

    let address = get("vaultAddress").unwrap_or(&defaults.address);
    let address = address.trim_end_matches('/').to_owned();
    if !(address.starts_with("https://") || address.starts_with("http://"))
        || address.parse::<http::Uri>().is_err()
    {
        return Err(invalid(format!(
            "vaultAddress {address:?} is not an http(s) URL such as https://vault.vault:8200"
        )));
    }

    let mut tls = defaults.tls.clone();
    let class_file = |parameter: &str| {
        get(parameter)
            .map(|path| defaults.tls_policy.check_class_path(parameter, path))
            .transpose()
            .map_err(invalid)
    };
    if let Some(file) = class_file("vaultCACertPath")? {
        tls.ca_cert = Some(file);
    }
    if let Some(file) = class_file("vaultCADirectory")? {
        tls.ca_directory = Some(file);
    }
    if let Some(name) = get("vaultTLSServerName") {
        tls.server_name = Some(name.to_owned());
    }
    if let Some(file) = class_file("vaultTLSClientCertPath")? {
        tls.client_cert = Some(file);
    }
    if let Some(file) = class_file("vaultTLSClientKeyPath")? {
        tls.client_key = Some(file);
    }
    if tls.client_cert.is_some() != tls.client_key.is_some() {
        return Err(invalid(
            "vaultTLSClientCertPath and vaultTLSClientKeyPath must be set together".to_owned(),
        ));
    }
    if let Some(text) = get("vaultSkipTLSVerify") {
        tls.skip_verify = parse_go_bool(text).ok_or_else(|| {
            invalid(format!(
                "vaultSkipTLSVerify {text:?} is not a boolean; use \"true\" or \"false\""
            ))
        })?;
    }

    let objects_text = get("objects").ok_or_else(|| {
        invalid(
            "no secrets configured - the provider will not read any secret material; \
             add an `objects` list to the SecretProviderClass parameters"
                .to_owned(),
        )
    })?;
    let objects = parse_objects(objects_text)?;

    Ok(VolumeConfig {
        address,
        namespace: get("vaultNamespace")
            .map(str::to_owned)
            .or_else(|| defaults.namespace.clone()),
        auth_mount,
        role: get("roleName").map(str::to_owned),
        audience: get("audience").unwrap_or("vault").to_owned(),
        tls,
        pod: pod.clone(),
        objects,
    })
}

fn parse_objects(text: &str) -> Result<Vec<ObjectConfig>, ProviderError> {
    let raw: Vec<RawObject> = yaml::objects(text).map_err(|err| {
        invalid(format!(
            "objects is not a YAML list of {{objectName, secretPath, secretKey, method, secretArgs, encoding, filePermission}}: {err}"
        ))
    })?;
    if raw.is_empty() {
        return Err(invalid(
            "no secrets configured - the provider will not read any secret material; \
             the `objects` list is empty"
                .to_owned(),
        ));
    }
    let mut seen = BTreeSet::new();
    let mut duplicated = BTreeSet::new();
    let mut objects = Vec::with_capacity(raw.len());
    for (index, object) in raw.into_iter().enumerate() {
        let parsed = parse_object(index, object)?;
        if !seen.insert(parsed.name.clone()) {
            duplicated.insert(parsed.name.clone());
        }
        objects.push(parsed);
    }
    if !duplicated.is_empty() {
        return Err(invalid(format!(
            "each 'objectName' within a SecretProviderClass must be unique, but the following keys were duplicated: {}",
            duplicated.into_iter().collect::<Vec<_>>().join(", ")
        )));
    }
    Ok(objects)
}

fn parse_object(index: usize, raw: RawObject) -> Result<ObjectConfig, ProviderError> {
    let name = raw
        .object_name
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| invalid(format!("objects[{index}]: objectName is required")))?;
    let field = |field: &str, why: String| invalid(format!("object {name:?}: {field}: {why}"));
    if !raw.unknown.is_empty() {
        // vault-csi-provider ignores them too; a misspelt secretKey shows up here.
        tracing::warn!(
            object = %name,
            keys = %raw.unknown.join(", "),
            "ignoring unknown keys of a Vault object; the known ones are objectName, secretPath, \
             secretKey, method, secretArgs, encoding and filePermission"
        );
    }
    limits::check_file_path(&name)
        .map_err(|why| invalid(format!("objects[{index}]: objectName {name:?}: {why}")))?;

    let secret_path = raw
        .secret_path
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .ok_or_else(|| {
            field(
                "secretPath",
                "is required, e.g. secret/data/app for KV v2".to_owned(),
            )
        })?;
    let (path, query) = match secret_path.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (secret_path.as_str(), None),
    };
    let path = normalize_path(path).map_err(|why| field("secretPath", why))?;
    if let Some(query) = query {
        check_query(query).map_err(|why| {
            invalid(format!(
                "failed to parse query parameters from secretPath {secret_path:?} for objectName {name:?}: {why}"
            ))
        })?;
    }

    let method = raw
        .method
        .map(|m| m.trim().to_ascii_uppercase())
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| "GET".to_owned());
    if !matches!(
        method.as_str(),
        "GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "LIST"
    ) {
        return Err(field(
            "method",
            format!("{method:?} is not one of GET, POST, PUT, PATCH, DELETE, LIST"),
        ));
    }
    // Serializing a JSON map cannot fail.
    let body = raw
        .secret_args
        .map(|args| serde_json::to_string(&args).unwrap_or_default());

    let encoding = match raw.encoding.as_deref().map(str::trim) {
        None | Some("") => Encoding::Utf8,
        Some(text) => match text.to_ascii_lowercase().as_str() {
            "utf-8" | "utf8" => Encoding::Utf8,
            "base64" => Encoding::Base64,
            "hex" => Encoding::Hex,
            _ => {
                return Err(field(
                    "encoding",
                    format!("invalid encoding type {text:?}. Should be utf-8, base64, or hex"),
                ));
            }
        },
    };
    let mode = match raw.file_permission.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(text) => Some(parse_yaml_mode(text).map_err(|why| field("filePermission", why))?),
    };
    let secret_key = raw.secret_key.filter(|k| !k.is_empty());

    Ok(ObjectConfig {
        name,
        request: ReadRequest {
            method,
            path,
            query: query.map(str::to_owned),
            body,
        },
        secret_key,
        encoding,
        mode: mode.filter(|m| *m != 0),
    })
}

/// `secret/foo`, `/secret/foo`, `v1/secret/foo` and `/v1/secret/foo` all become
/// `/v1/secret/foo`; empty segments and a trailing `/` are dropped and the rest is
/// percent-encoded as Go's `net/url` encodes a path, so `secret/my app` and `secret/50%` read
/// what vault-csi-provider reads.
fn normalize_path(path: &str) -> Result<String, String> {
    let trimmed = path.trim_start_matches('/');
    let rest = trimmed.strip_prefix("v1/").unwrap_or(trimmed);
    let segments: Vec<&str> = rest.split('/').filter(|part| !part.is_empty()).collect();
    if segments.is_empty() {
        return Err(format!("{path:?} names no secret"));
    }
    if segments.iter().any(|part| *part == "." || *part == "..") {
        return Err(format!(
            "{path:?} has a '.' or '..' segment; name the secret's path as it is"
        ));
    }
    let mut out = String::with_capacity(rest.len() + 4);
    out.push_str("/v1");
    for segment in segments {
        out.push('/');
        for byte in segment.bytes() {
            if byte.is_ascii_alphanumeric() || b"-_.~$&+,:;=@".contains(&byte) {
                out.push(char::from(byte));
            } else {
                out.push_str(&format!("%{byte:02X}"));
            }
        }
    }
    Ok(out)
}

fn check_query(query: &str) -> Result<(), String> {
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key.is_empty() {
            return Err(format!("{pair:?} has no parameter name"));
        }
        for part in [key, value] {
            check_escapes(part)?;
        }
    }
    Ok(())
}

fn check_escapes(text: &str) -> Result<(), String> {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let valid = bytes.len() > i + 2
                    && bytes[i + 1].is_ascii_hexdigit()
                    && bytes[i + 2].is_ascii_hexdigit();
                if !valid {
                    return Err(format!("invalid URL escape in {text:?}"));
                }
                i += 3;
            }
            b if b.is_ascii_control() || b == b' ' || b == b'#' => {
                return Err(format!(
                    "{text:?} contains a space, '#' or a control character"
                ));
            }
            _ => i += 1,
        }
    }
    Ok(())
}

/// A YAML integer file mode as upstream decodes it: `0600` and `0o600` are octal, `420` is
/// decimal (0644); bits above 0777 are dropped.
fn parse_yaml_mode(text: &str) -> Result<u32, String> {
    let parsed = if let Some(octal) = text.strip_prefix("0o") {
        u32::from_str_radix(octal, 8)
    } else if text.len() > 1 && text.starts_with('0') {
        u32::from_str_radix(&text[1..], 8)
    } else {
        text.parse::<u32>()
    };
    match parsed {
        // Only permission bits are written, as upstream's writer does with what
        // vault-csi-provider passes on.
        Ok(mode) => Ok(mode & 0o777),
        _ => Err(format!(
            "{text:?} is not a file mode; write it in octal with a leading zero, e.g. 0600"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn error(pairs: &[(&str, &str)]) -> String {
        parse(&params(pairs), &PodInfo::default(), &Defaults::default())
            .unwrap_err()
            .to_string()
    }

    const ONE: &str = "- objectName: a\n  secretPath: secret/data/a\n";

    #[test]
    fn a_full_parameter_set_parses() {
        let config = parse(
            &params(&[
                ("roleName", "app"),
                ("vaultAddress", "https://vault:8200/"),
                ("vaultNamespace", "team"),
                ("vaultAuthMountPath", "/auth/jwt/"),
                ("audience", "custom"),
                ("vaultCACertPath", "/ca.pem"),
                ("vaultTLSServerName", "vault.internal"),
                ("vaultSkipTLSVerify", "False"),
                ("vaultTLSClientCertPath", "/c.pem"),
                ("vaultTLSClientKeyPath", "/k.pem"),
                (
                    "objects",
                    "- objectName: cert\n  secretPath: /v1/pki/issue/web?ttl=1h&x=%2F\n  method: put\n  \
                     secretArgs: {common_name: a.example.com}\n  secretKey: certificate\n  \
                     encoding: BASE64\n  filePermission: 0600\n\
                     - objectName: whole\n  secretPath: v1/secret/x\n  filePermission: 420\n",
                ),
            ]),
            &PodInfo {
                namespace: "ns".into(),
                service_account: "sa".into(),
                ..Default::default()
            },
            &Defaults::default(),
        )
        .unwrap();
        assert_eq!(config.address, "https://vault:8200");
        assert_eq!(config.auth_mount, "jwt");
        assert_eq!(config.audience, "custom");
        assert_eq!(config.namespace.as_deref(), Some("team"));
        assert_eq!(config.pod.service_account, "sa");
        assert_eq!(config.tls.server_name.as_deref(), Some("vault.internal"));
        let cert = &config.objects[0];
        assert_eq!(cert.request.method, "PUT");
        assert_eq!(cert.request.path, "/v1/pki/issue/web");
        assert_eq!(cert.request.query.as_deref(), Some("ttl=1h&x=%2F"));
        assert_eq!(
            cert.request.body.as_deref(),
            Some(r#"{"common_name":"a.example.com"}"#)
        );
        assert_eq!(cert.encoding, Encoding::Base64);
        assert_eq!(cert.mode, Some(0o600));
        assert_eq!(config.objects[1].request.path, "/v1/secret/x");
        assert_eq!(config.objects[1].mode, Some(0o644));
        assert_eq!(config.objects[1].secret_key, None);
    }

    #[test]
    fn defaults_fill_what_the_class_leaves_out() {
        let defaults = Defaults {
            address: "http://127.0.0.1:8200".to_owned(),
            auth_mount: "k8s-prod".to_owned(),
            namespace: Some("root-ns".to_owned()),
            tls: TlsConfig {
                skip_verify: true,
                ..TlsConfig::default()
            },
            tls_policy: TlsPolicy::default(),
        };
        let config = parse(&params(&[("objects", ONE)]), &PodInfo::default(), &defaults).unwrap();
        assert_eq!(config.address, "http://127.0.0.1:8200");
        assert_eq!(config.auth_mount, "k8s-prod");
        assert_eq!(config.namespace.as_deref(), Some("root-ns"));
        assert_eq!(config.audience, "vault");
        assert!(config.tls.skip_verify);
    }

    #[test]
    fn paths_are_encoded_and_unknown_keys_skipped_as_vault_csi_provider_does() {
        let config = parse(
            &params(&[
                ("roleName", "app"),
                (
                    "objects",
                    "- objectName: a\n  secretPath: secret//data/my app/50%#1/\n  secretkey: typo\n  \
                     objectAlias: ignored\n- objectName: b\n  secretPath: v1/kv/ok-_.~$&+,:;=@\n  \
                     filePermission: 01640\n",
                ),
            ]),
            &PodInfo::default(),
            &Defaults::default(),
        )
        .unwrap();
        let (a, b) = (&config.objects[0], &config.objects[1]);
        assert_eq!(a.request.path, "/v1/secret/data/my%20app/50%25%231");
        assert_eq!(a.secret_key, None, "keys match exactly, as in yaml.v3");
        assert_eq!(b.request.path, "/v1/kv/ok-_.~$&+,:;=@");
        assert_eq!(b.mode, Some(0o640), "bits above 0777 are dropped");
    }

    #[test]
    fn every_malformed_field_is_named() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[], "no secrets configured"),
            (&[("objects", "[]")], "no secrets configured"),
            (&[("objects", "not: [a list")], "objects is not a YAML list"),
            (
                &[
                    ("objects", ONE),
                    ("vaultKubernetesMountPath", "a"),
                    ("vaultAuthMountPath", "b"),
                ],
                "cannot set both vaultKubernetesMountPath and vaultAuthMountPath",
            ),
            (
                &[("objects", ONE), ("vaultSkipTLSVerify", "yes")],
                "vaultSkipTLSVerify \"yes\"",
            ),
            (
                &[("objects", ONE), ("vaultAddress", "vault:8200")],
                "vaultAddress \"vault:8200\"",
            ),
            (
                &[("objects", ONE), ("vaultTLSClientCertPath", "/c.pem")],
                "must be set together",
            ),
            (
                &[("objects", "- secretPath: a\n")],
                "objects[0]: objectName is required",
            ),
            (
                &[("objects", "- objectName: a\n")],
                "object \"a\": secretPath: is required",
            ),
            (
                &[("objects", "- objectName: a\n  secretPath: secret/../x\n")],
                "object \"a\": secretPath",
            ),
            (
                &[(
                    "objects",
                    "- objectName: a\n  secretPath: secret/x?version=%zz\n",
                )],
                "failed to parse query parameters from secretPath",
            ),
            (
                &[(
                    "objects",
                    "- objectName: a\n  secretPath: secret/x\n  encoding: rot13\n",
                )],
                "object \"a\": encoding: invalid encoding type \"rot13\". Should be utf-8, base64, or hex",
            ),
            (
                &[(
                    "objects",
                    "- objectName: a\n  secretPath: secret/x\n  filePermission: 0999\n",
                )],
                "object \"a\": filePermission",
            ),
            (
                &[(
                    "objects",
                    "- objectName: a\n  secretPath: secret/x\n  method: FETCH\n",
                )],
                "object \"a\": method",
            ),
            (
                &[(
                    "objects",
                    "- objectName: a\n  secretPath: secret/x\n  secretArgs: [1]\n",
                )],
                "objects is not a YAML list",
            ),
            (
                &[(
                    "objects",
                    "- {objectName: a, secretPath: x}\n- {objectName: b, secretPath: x}\n\
                     - {objectName: a, secretPath: y}\n- {objectName: b, secretPath: y}\n",
                )],
                "the following keys were duplicated: a, b",
            ),
        ];
        for (pairs, expected) in cases {
            let message = error(pairs);
            assert!(message.contains(expected), "{pairs:?}: {message}");
            assert!(message.starts_with("provider \"vault\""), "{message}");
        }
    }

    #[test]
    fn paths_are_normalized_like_upstream() {
        for path in [
            "secret/foo",
            "/secret/foo",
            "v1/secret/foo",
            "/v1/secret/foo",
        ] {
            assert_eq!(normalize_path(path).unwrap(), "/v1/secret/foo");
        }
        assert!(normalize_path("/v1/").is_err());
    }

    #[test]
    fn class_tls_files_must_be_in_an_allowed_directory_and_never_below_kubelet() {
        let defaults = Defaults {
            tls_policy: TlsPolicy {
                allowed_dirs: Some(vec![PathBuf::from("/etc/vault-tls")]),
                forbidden_dirs: vec![PathBuf::from("/var/lib/kubelet")],
            },
            ..Defaults::default()
        };
        let with = |parameter: &str, path: &str| {
            parse(
                &params(&[("objects", ONE), (parameter, path)]),
                &PodInfo::default(),
                &defaults,
            )
        };
        let ok = with("vaultCACertPath", "/etc/vault-tls/ca.pem").unwrap();
        assert_eq!(
            ok.tls.ca_cert,
            Some(TlsFile {
                path: PathBuf::from("/etc/vault-tls/ca.pem"),
                from_class: true
            })
        );
        let other_pod = "/var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/v/mount/tls.key";
        for parameter in [
            "vaultCACertPath",
            "vaultCADirectory",
            "vaultTLSClientCertPath",
            "vaultTLSClientKeyPath",
        ] {
            for path in [
                other_pod,
                "/etc/shadow",
                "/nonexistent/x",
                "/etc/vault-tls/../x",
            ] {
                let message = with(parameter, path).unwrap_err().to_string();
                assert!(message.contains(parameter), "{message}");
                assert!(!message.contains("No such file"), "{message}");
            }
        }
        // The same refusal for a file that exists and one that does not.
        let exists = with("vaultCACertPath", "/etc/hostname")
            .unwrap_err()
            .to_string();
        let missing = with("vaultCACertPath", "/etc/no-such-file")
            .unwrap_err()
            .to_string();
        assert_eq!(
            exists.replace("/etc/hostname", "X"),
            missing.replace("/etc/no-such-file", "X")
        );
        // Allowing the kubelet root itself still never reaches pods' volumes.
        let mut open = defaults.clone();
        open.tls_policy.allowed_dirs = Some(vec![PathBuf::from("/var/lib")]);
        assert!(
            parse(
                &params(&[("objects", ONE), ("vaultTLSClientKeyPath", other_pod)]),
                &PodInfo::default(),
                &open
            )
            .is_err()
        );
        assert!(with("vaultCACertPath", "relative/ca.pem").is_err());
    }

    #[test]
    fn object_names_are_file_paths_a_volume_can_hold() {
        let deep = vec!["d"; 2000].join("/");
        let objects = format!("- objectName: {deep}\n  secretPath: secret/data/a\n");
        let message = error(&[("objects", &objects)]);
        assert!(message.contains("objects[0]: objectName"), "{message}");
        assert!(message.contains("16 directories deep"), "{message}");
    }
}
