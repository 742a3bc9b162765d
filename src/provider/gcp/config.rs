//! The GCP provider's SecretProviderClass parameters, as secrets-store-csi-driver-provider-gcp
//! reads them: `secrets` (a YAML list of `resourceName`, `path` or `fileName`, `mode`,
//! `extractJSONKey` or `extractYAMLKey`) and `auth`. Everything is checked here, before any
//! token is exchanged or any secret read.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::NAME;
use crate::limits::MAX_FILES;
use crate::provider::{ProviderError, parameter, yaml};

/// Parameters only the class may set: they choose what is read and as whom.
pub const PARAMETERS: &[&str] = &["secrets", "auth"];

/// Longest location the plugin accepts in a regional resource name.
const MAX_LOCATION_LEN: usize = 30;
/// Longest resource name: project, secret and version ids are far shorter.
const MAX_RESOURCE_NAME_LEN: usize = 512;

/// One volume's parsed parameters.
#[derive(Debug, Clone)]
pub struct VolumeConfig {
    /// The secrets to mount, in class order.
    pub secrets: Vec<SecretEntry>,
}

/// One `secrets` entry.
#[derive(Debug, Clone)]
pub struct SecretEntry {
    /// The version to read.
    pub resource: Resource,
    /// File path in the volume (`path`, else `fileName`).
    pub path: String,
    /// Top-level key of a JSON or YAML payload to write instead of the whole payload.
    pub extract: Option<Extract>,
    /// File mode, else the volume's default.
    pub mode: Option<u32>,
}

/// A secret version's resource name, and its location when it is regional.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Resource {
    /// `projects/P/secrets/S/versions/V` or `projects/P/locations/L/secrets/S/versions/V`.
    pub name: String,
    /// `L` of a regional secret, whose API is served at its regional endpoint.
    pub location: Option<String>,
}

/// Which key of a structured payload a file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Extract {
    /// `extractJSONKey`.
    Json(String),
    /// `extractYAMLKey`.
    Yaml(String),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSecret {
    #[serde(default)]
    resource_name: String,
    #[serde(default)]
    file_name: String,
    #[serde(default)]
    path: String,
    #[serde(default, rename = "extractJSONKey")]
    extract_json_key: String,
    #[serde(default, rename = "extractYAMLKey")]
    extract_yaml_key: String,
    #[serde(default)]
    mode: Option<RawMode>,
}

/// A mode as YAML gives it: a number (`0400` read as octal, as the plugin's YAML library
/// does, or decimal `256`) or a string of one.
enum RawMode {
    Number(i64),
    Text(String),
}

impl<'de> Deserialize<'de> for RawMode {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Mode;
        impl serde::de::Visitor<'_> for Mode {
            type Value = RawMode;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a file mode such as 0400 or 256")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RawMode, E> {
                Ok(RawMode::Number(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RawMode, E> {
                Ok(RawMode::Number(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawMode, E> {
                Ok(RawMode::Text(v.to_owned()))
            }
        }
        // As text first, so `0400` keeps its leading zero (octal, as Go's YAML reads it).
        deserializer.deserialize_str(Mode)
    }
}

/// Parses a volume's parameters; the pod attributes have already been merged in.
pub fn parse(parameters: &BTreeMap<String, String>) -> Result<VolumeConfig, ProviderError> {
    match parameter(parameters, "auth") {
        None | Some("pod-adc") => {}
        Some("provider-adc") => {
            return Err(invalid(
                "auth: provider-adc is not supported by the built-in gcp provider: it would read \
                 with the node's own Google identity for any pod on it; grant the pod's \
                 workload identity access instead (auth: pod-adc, the default)"
                    .to_owned(),
            ));
        }
        Some(other) => {
            return Err(invalid(format!(
                "unknown auth configuration: {other:?}; use pod-adc (the default)"
            )));
        }
    }
    let Some(text) = parameters.get("secrets") else {
        return Err(invalid("missing required 'secrets' attribute".to_owned()));
    };
    let raw: Vec<RawSecret> = yaml::objects(text)
        .map_err(|err| invalid(format!("failed to unmarshal secrets attribute: {err}")))?;
    if raw.is_empty() {
        return Err(invalid(
            "the secrets attribute lists no secrets; add at least one resourceName".to_owned(),
        ));
    }
    debug_assert!(raw.len() <= MAX_FILES);
    let secrets = raw
        .into_iter()
        .enumerate()
        .map(|(index, raw)| entry(index, raw))
        .collect::<Result<_, _>>()?;
    Ok(VolumeConfig { secrets })
}

fn entry(index: usize, raw: RawSecret) -> Result<SecretEntry, ProviderError> {
    let at = |message: String| invalid(format!("secrets[{index}]: {message}"));
    let resource = resource(raw.resource_name.trim()).map_err(at)?;
    let path = if raw.path.is_empty() {
        raw.file_name
    } else {
        raw.path
    };
    if path.is_empty() {
        return Err(at(format!(
            "{} has no path: set path (or fileName) to the file to write",
            resource.name
        )));
    }
    crate::limits::check_file_path(&path)
        .map_err(|why| at(format!("path {path:?} is not a safe file path: {why}")))?;
    let extract = match (raw.extract_json_key, raw.extract_yaml_key) {
        (json, yaml) if !json.is_empty() && !yaml.is_empty() => {
            return Err(at(
                "extractJSONKey and extractYAMLKey cannot both be set; keep one".to_owned(),
            ));
        }
        (json, _) if !json.is_empty() => Some(Extract::Json(json)),
        (_, yaml) if !yaml.is_empty() => Some(Extract::Yaml(yaml)),
        _ => None,
    };
    let mode = raw.mode.map(parse_mode).transpose().map_err(at)?;
    Ok(SecretEntry {
        resource,
        path,
        extract,
        mode,
    })
}

/// Checks a resource name against the two shapes of a secret version name, so nothing else
/// (another API, a path, an injected host) is ever sent.
pub fn resource(name: &str) -> Result<Resource, String> {
    let unknown = || {
        if name.contains("/parameters/") {
            format!(
                "{name:?}: Parameter Manager resources are not supported by the built-in gcp \
                 provider; use the upstream plugin for them (--builtin-providers without gcp)"
            )
        } else {
            format!(
                "invalid resourceName {name:?}: expected \
                 projects/PROJECT/secrets/SECRET/versions/VERSION or \
                 projects/PROJECT/locations/LOCATION/secrets/SECRET/versions/VERSION"
            )
        }
    };
    if name.len() > MAX_RESOURCE_NAME_LEN {
        return Err(format!(
            "resourceName is {} bytes; at most {MAX_RESOURCE_NAME_LEN}",
            name.len()
        ));
    }
    let parts: Vec<&str> = name.split('/').collect();
    let id_ok = |id: &str| {
        !id.is_empty()
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
    };
    let location = match parts.as_slice() {
        ["projects", p, "secrets", s, "versions", v] if [p, s, v].iter().all(|id| id_ok(id)) => {
            None
        }
        ["projects", p, "locations", l, "secrets", s, "versions", v]
            if [p, l, s, v].iter().all(|id| id_ok(id)) =>
        {
            if l.len() > MAX_LOCATION_LEN {
                return Err(format!(
                    "Invalid location: {l}, location length exceeds limit ({MAX_LOCATION_LEN})"
                ));
            }
            if !l
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                return Err(format!(
                    "Invalid location: {l:?}: a location is lowercase letters, digits and '-'"
                ));
            }
            Some((*l).to_owned())
        }
        _ => return Err(unknown()),
    };
    Ok(Resource {
        name: name.to_owned(),
        location,
    })
}

fn parse_mode(raw: RawMode) -> Result<u32, String> {
    let value = match raw {
        RawMode::Number(n) => n,
        RawMode::Text(text) => {
            let text = text.trim();
            let parsed = if let Some(octal) = text.strip_prefix("0o") {
                i64::from_str_radix(octal, 8)
            } else if text.len() > 1 && text.starts_with('0') {
                i64::from_str_radix(&text[1..], 8)
            } else {
                text.parse()
            };
            parsed.map_err(|_| format!("mode {text:?} is not a number"))?
        }
    };
    u32::try_from(value)
        .ok()
        .filter(|mode| *mode <= 0o777)
        .ok_or_else(|| {
            format!(
                "mode {value} is out of range: an octal value between 0000 and 0777 or a decimal \
                 value between 0 and 511"
            )
        })
}

fn invalid(message: String) -> ProviderError {
    ProviderError::InvalidParameters {
        provider: NAME.to_owned(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(secrets: &str) -> BTreeMap<String, String> {
        BTreeMap::from([("secrets".to_owned(), secrets.to_owned())])
    }

    fn message(result: Result<VolumeConfig, ProviderError>) -> String {
        match result {
            Err(err) => err.to_string(),
            Ok(config) => panic!("accepted: {config:?}"),
        }
    }

    #[test]
    fn reads_the_plugins_example_entries() {
        let config = parse(&params(
            r#"
- resourceName: "projects/p1/secrets/testsecret/versions/latest"
  path: "good1.txt"
  extractJSONKey: "user"
- resourceName: "projects/p1/locations/us-central1/secrets/testsecret/versions/3"
  fileName: "good2.txt"
  mode: 0400
- resourceName: projects/p1/secrets/yaml/versions/1
  path: my/nested/path/yaml
  extractYAMLKey: user
  mode: 256
- resourceName: projects/p1/secrets/s/versions/1
  path: quoted
  mode: "0440"
"#,
        ))
        .unwrap();
        let s = &config.secrets;
        assert_eq!(s.len(), 4);
        assert_eq!(s[0].resource.location, None);
        assert_eq!(s[0].extract, Some(Extract::Json("user".to_owned())));
        assert_eq!(s[0].mode, None);
        assert_eq!(s[1].resource.location.as_deref(), Some("us-central1"));
        assert_eq!(s[1].path, "good2.txt");
        assert_eq!(s[1].mode, Some(0o400));
        assert_eq!(s[2].extract, Some(Extract::Yaml("user".to_owned())));
        assert_eq!(s[2].mode, Some(0o400));
        assert_eq!(s[3].mode, Some(0o440));
    }

    #[test]
    fn refuses_what_the_plugin_refuses_and_names_the_fix() {
        assert!(message(parse(&BTreeMap::new())).contains("missing required 'secrets'"));
        assert!(message(parse(&params("- resourceName: [x"))).contains("failed to unmarshal"));
        let both = "- {resourceName: projects/p/secrets/s/versions/1, path: a, extractJSONKey: a, extractYAMLKey: b}";
        assert!(message(parse(&params(both))).contains("cannot both be set"));
        let escape = "- {resourceName: projects/p/secrets/s/versions/1, path: my/invalid/../path}";
        assert!(message(parse(&params(escape))).contains("not a safe file path"));
        let no_path = "- resourceName: projects/p/secrets/s/versions/1";
        assert!(message(parse(&params(no_path))).contains("set path (or fileName)"));
        for bad in [
            "projects/p/secrets/s",
            "x/projects/p/secrets/s/versions/1",
            "projects/p/secrets/s/versions/1/../2",
            "projects/p/locations/evil.example.com/secrets/s/versions/1",
            "projects/p/locations/us-central1/parameters/x/versions/1",
            "projects/p/locations/abcdefghijklmnopqrstuvwxyz01234/secrets/s/versions/1",
        ] {
            let class = format!("- {{resourceName: {bad:?}, path: a}}");
            let why = message(parse(&params(&class)));
            assert!(why.contains("secrets[0]"), "{bad}: {why}");
        }
        let mode = "- {resourceName: projects/p/secrets/s/versions/1, path: a, mode: 1000}";
        assert!(message(parse(&params(mode))).contains("out of range"));
        let mut auth = params("- {resourceName: projects/p/secrets/s/versions/1, path: a}");
        auth.insert("auth".to_owned(), "provider-adc".to_owned());
        assert!(message(parse(&auth)).contains("pod-adc"));
        auth.insert("auth".to_owned(), "node".to_owned());
        assert!(message(parse(&auth)).contains("unknown auth"));
    }
}
