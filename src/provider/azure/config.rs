//! The Azure provider's SecretProviderClass parameters, as
//! secrets-store-csi-driver-provider-azure reads them: `keyvaultName`, `tenantId` (or
//! `tenantID`), `clientID`, `cloudName`, the identity switches, and `objects` (a YAML
//! `array` of YAML documents, one per Key Vault object). Everything is checked here, before
//! any token is requested or any object read.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::NAME;
use crate::limits::MAX_FILES;
use crate::provider::{ProviderError, parameter, parse_go_bool, yaml};

/// Parameters only the class may set: they choose what is read and as whom.
pub const PARAMETERS: &[&str] = &[
    "objects",
    "keyvaultName",
    "tenantId",
    "tenantID",
    "clientID",
    "cloudName",
    "cloudEnvFileName",
    "usePodIdentity",
    "useVMManagedIdentity",
    "userAssignedIdentityID",
    "useAzureTokenProxy",
];

/// Longest Key Vault object name (Key Vault's own limit).
const MAX_OBJECT_NAME_LEN: usize = 127;
/// Longest object version: Key Vault's are 32 hex digits.
const MAX_VERSION_LEN: usize = 64;
/// Longest tenant: a GUID or a domain name.
const MAX_TENANT_LEN: usize = 253;
/// Longest client ID: a GUID, but Entra ID also takes an application ID URI.
const MAX_CLIENT_ID_LEN: usize = 256;

/// An Azure cloud: where Entra ID and Key Vault are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Cloud {
    /// `AzurePublicCloud` (also `AzureCloud`).
    Public,
    /// `AzureChinaCloud`.
    China,
    /// `AzureUSGovernmentCloud` (also `AzureUSGovernment`).
    UsGovernment,
    /// `AzureGermanCloud`.
    German,
}

impl Cloud {
    /// The cloud of a `cloudName` (or `--azure-cloud-name`), matched ignoring case as
    /// go-autorest does.
    pub fn from_name(name: &str) -> Option<Self> {
        match name.trim().to_ascii_uppercase().as_str() {
            "AZUREPUBLICCLOUD" | "AZURECLOUD" => Some(Self::Public),
            "AZURECHINACLOUD" => Some(Self::China),
            "AZUREUSGOVERNMENTCLOUD" | "AZUREUSGOVERNMENT" => Some(Self::UsGovernment),
            "AZUREGERMANCLOUD" => Some(Self::German),
            _ => None,
        }
    }

    /// Entra ID's authority host.
    pub fn authority(self) -> &'static str {
        match self {
            Self::Public => "https://login.microsoftonline.com/",
            Self::China => "https://login.chinacloudapi.cn/",
            Self::UsGovernment => "https://login.microsoftonline.us/",
            Self::German => "https://login.microsoftonline.de/",
        }
    }

    /// The DNS suffix of vault hosts.
    pub fn vault_suffix(self) -> &'static str {
        match self {
            Self::Public => "vault.azure.net",
            Self::China => "vault.azure.cn",
            Self::UsGovernment => "vault.usgovcloudapi.net",
            Self::German => "vault.microsoftazure.de",
        }
    }

    /// The token scope of Key Vault in this cloud.
    pub fn vault_scope(self) -> String {
        format!("https://{}/.default", self.vault_suffix())
    }
}

/// How the mount authenticates to Entra ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Login {
    /// Workload identity: the pod's token for `api://AzureADTokenExchange` exchanged for an
    /// access token of this application (`clientID`).
    Workload {
        /// The application or managed identity's client ID.
        client_id: String,
    },
    /// A service principal whose `clientid` and `clientsecret` are in the volume's
    /// `nodePublishSecretRef` Secret.
    ServicePrincipal,
}

/// One volume's parsed parameters.
#[derive(Debug, Clone)]
pub struct VolumeConfig {
    /// The vault's name (`keyvaultName`).
    pub vault: String,
    /// The Entra ID tenant.
    pub tenant: String,
    /// The cloud the vault is in, when the class names one.
    pub cloud: Option<Cloud>,
    /// How to log in.
    pub login: Login,
    /// The objects to mount, in class order.
    pub objects: Vec<KeyVaultObject>,
}

/// What kind of Key Vault object an entry reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectType {
    /// `secret`: the secret's value (for a certificate's secret, its key and chain).
    Secret,
    /// `key`: the public key, as PEM.
    Key,
    /// `cert`: the certificate alone, as PEM.
    Cert,
}

impl ObjectType {
    /// The name in classes and object ids.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Secret => "secret",
            Self::Key => "key",
            Self::Cert => "cert",
        }
    }

    /// The Key Vault collection it is read from.
    pub fn collection(self) -> &'static str {
        match self {
            Self::Secret => "secrets",
            Self::Key => "keys",
            Self::Cert => "certificates",
        }
    }
}

/// How a secret's text is turned into the file's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// As is (`utf-8`, the default).
    Utf8,
    /// Base64-decoded.
    Base64,
    /// Hex-decoded.
    Hex,
}

/// One object read from the vault: the key of shared reads.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    /// Its kind.
    pub kind: ObjectType,
    /// Its name.
    pub name: String,
    /// The version asked for; empty is the current one.
    pub version: String,
}

/// One `objects` entry.
#[derive(Debug, Clone)]
pub struct KeyVaultObject {
    /// What to read.
    pub object: ObjectRef,
    /// File path in the volume (`objectAlias`, else `objectName`).
    pub path: String,
    /// `objectFormat: pfx`: a PKCS#12 certificate secret as Key Vault holds it.
    pub pfx: bool,
    /// `objectEncoding`, for secrets.
    pub encoding: Encoding,
    /// File mode, else the volume's default.
    pub mode: Option<u32>,
}

/// An entry as yaml.v3 reads it into the plugin's struct: exact keys, strings trimmed.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawObject {
    #[serde(default)]
    object_name: String,
    #[serde(default)]
    object_alias: String,
    #[serde(default)]
    object_version: String,
    #[serde(default)]
    object_version_history: i32,
    #[serde(default)]
    object_type: String,
    #[serde(default)]
    object_format: String,
    #[serde(default)]
    object_encoding: String,
    #[serde(default)]
    file_permission: String,
}

#[derive(Deserialize)]
struct RawArray {
    #[serde(default)]
    array: Vec<String>,
}

/// Parses a volume's parameters; the pod attributes have already been merged in.
pub fn parse(parameters: &BTreeMap<String, String>) -> Result<VolumeConfig, ProviderError> {
    for switch in [
        "usePodIdentity",
        "useVMManagedIdentity",
        "useAzureTokenProxy",
    ] {
        let Some(text) = parameter(parameters, switch) else {
            continue;
        };
        match parse_go_bool(text) {
            Some(false) => {}
            Some(true) => return Err(invalid(unsupported_mode(switch))),
            None => {
                return Err(invalid(format!(
                    "failed to parse {switch} flag: {text:?} is not true or false"
                )));
            }
        }
    }
    if parameter(parameters, "cloudEnvFileName").is_some() {
        return Err(invalid(
            "cloudEnvFileName is not supported by the built-in azure provider: a class may not \
             name a file on the node; set the cloud with cloudName (AzurePublicCloud, \
             AzureChinaCloud, AzureUSGovernmentCloud)"
                .to_owned(),
        ));
    }
    let vault = parameter(parameters, "keyvaultName")
        .ok_or_else(|| invalid("keyvaultName is not provided".to_owned()))?
        .to_owned();
    check_vault_name(&vault)?;
    let tenant = parameter(parameters, "tenantID")
        .or_else(|| parameter(parameters, "tenantId"))
        .ok_or_else(|| invalid("tenantId is not provided".to_owned()))?
        .to_owned();
    if tenant.len() > MAX_TENANT_LEN
        || !tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return Err(invalid(format!(
            "invalid tenantId {tenant:?}: expected the tenant's ID (a GUID) or its domain name"
        )));
    }
    let cloud = match parameter(parameters, "cloudName") {
        None => None,
        Some(name) => Some(Cloud::from_name(name).ok_or_else(|| {
            invalid(format!(
                "cloudName {name:?} is not valid: use AzurePublicCloud, AzureChinaCloud, \
                 AzureUSGovernmentCloud or AzureGermanCloud"
            ))
        })?),
    };
    let login = match parameter(parameters, "clientID") {
        Some(client_id) => {
            if client_id.len() > MAX_CLIENT_ID_LEN || client_id.chars().any(char::is_control) {
                return Err(invalid(format!(
                    "invalid clientID: expected the client ID (a GUID) of the application or \
                     managed identity, at most {MAX_CLIENT_ID_LEN} bytes"
                )));
            }
            Login::Workload {
                client_id: client_id.to_owned(),
            }
        }
        None => Login::ServicePrincipal,
    };
    let text =
        parameter(parameters, "objects").ok_or_else(|| invalid("objects is not set".to_owned()))?;
    let array: RawArray = yaml::from_str(text, true)
        .map_err(|err| invalid(format!("failed to yaml unmarshal objects, error: {err}")))?;
    if array.array.len() > MAX_FILES {
        return Err(invalid(format!(
            "objects lists {} entries; a volume may have at most {MAX_FILES}",
            array.array.len()
        )));
    }
    let objects = array
        .array
        .iter()
        .enumerate()
        .map(|(index, text)| entry(index, text))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(VolumeConfig {
        vault,
        tenant,
        cloud,
        login,
        objects,
    })
}

fn unsupported_mode(switch: &str) -> String {
    let why = match switch {
        "usePodIdentity" => "AAD Pod Identity is retired upstream",
        "useVMManagedIdentity" => {
            "it would read with the node's managed identity for any pod on the node"
        }
        _ => "identity binding needs AKS's token proxy",
    };
    format!(
        "{switch}: true is not supported by the built-in azure provider ({why}); use workload \
         identity: set clientID to the client ID of an identity federated with the pod's \
         service account"
    )
}

/// The plugin's rule: 3 to 24 of `[-A-Za-z0-9]`. It becomes a host name.
fn check_vault_name(name: &str) -> Result<(), ProviderError> {
    if !(3..=24).contains(&name.len()) {
        return Err(invalid(format!(
            "failed to get vault: Invalid vault name: {name:?}, must be between 3 and 24 chars"
        )));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(invalid(format!(
            "failed to get vault: Invalid vault name: {name:?}, must match [-a-zA-Z0-9]{{3,24}}"
        )));
    }
    Ok(())
}

fn entry(index: usize, text: &str) -> Result<KeyVaultObject, ProviderError> {
    let at = |message: String| invalid(format!("objects.array[{index}]: {message}"));
    let raw: RawObject = yaml::from_str::<Option<RawObject>>(text, true)
        .map_err(|err| {
            at(format!(
                "unmarshal failed for keyVaultObjects at index {index}, error: {err}"
            ))
        })?
        .unwrap_or_default();
    let name = raw.object_name.trim().to_owned();
    let version = raw.object_version.trim().to_owned();
    let kind_text = raw.object_type.trim();
    let format = raw.object_format.trim();
    let encoding = raw.object_encoding.trim();
    let failed = |message: String| {
        at(format!(
            "failed to get objectType:{kind_text}, objectName:{name}, objectVersion:{version}: {message}"
        ))
    };
    let kind = match kind_text {
        "secret" => ObjectType::Secret,
        "key" => ObjectType::Key,
        "cert" => ObjectType::Cert,
        _ => {
            return Err(failed(
                "Invalid vaultObjectTypes. Should be secret, key, or cert".to_owned(),
            ));
        }
    };
    let pfx = match format {
        "" => false,
        f if f.eq_ignore_ascii_case("pem") => false,
        f if f.eq_ignore_ascii_case("pfx") => {
            if f == "pfx" && kind != ObjectType::Secret {
                return Err(failed(
                    "PFX format only supported for objectType: secret".to_owned(),
                ));
            }
            true
        }
        other => {
            return Err(failed(format!(
                "invalid objectFormat: {other}, should be PEM or PFX"
            )));
        }
    };
    let encoding = match encoding {
        "" => Encoding::Utf8,
        _ if kind != ObjectType::Secret => {
            return Err(failed(
                "objectEncoding only supported for objectType: secret".to_owned(),
            ));
        }
        e if e.eq_ignore_ascii_case("utf-8") => Encoding::Utf8,
        e if e.eq_ignore_ascii_case("base64") => Encoding::Base64,
        e if e.eq_ignore_ascii_case("hex") => Encoding::Hex,
        other => {
            return Err(failed(format!(
                "invalid objectEncoding: {other}, should be hex, base64 or utf-8"
            )));
        }
    };
    let alias = raw.object_alias.trim();
    let path = if alias.is_empty() { &name } else { alias }.to_owned();
    if path.is_empty() {
        return Err(failed("file name must not be empty".to_owned()));
    }
    crate::limits::check_file_path(&path)
        .map_err(|why| failed(format!("file name {path:?} is not a safe file path: {why}")))?;
    if name.is_empty()
        || name.len() > MAX_OBJECT_NAME_LEN
        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(failed(format!(
            "invalid objectName {name:?}: Key Vault names are 1 to {MAX_OBJECT_NAME_LEN} of \
             [0-9a-zA-Z-]"
        )));
    }
    if version.len() > MAX_VERSION_LEN || !version.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(failed(format!(
            "invalid objectVersion {version:?}: a Key Vault version is 32 hex digits (leave it \
             empty for the current version)"
        )));
    }
    if raw.object_version_history > 1 {
        return Err(failed(
            "objectVersionHistory is not supported by the built-in azure provider; mount one \
             version per entry (objectVersion), or serve this class with the upstream plugin"
                .to_owned(),
        ));
    }
    let mode = match raw.file_permission.trim() {
        "" => None,
        text => Some(
            u32::from_str_radix(text, 8)
                .ok()
                .filter(|mode| *mode <= 0o7777)
                .ok_or_else(|| {
                    failed(format!(
                        "file permission must be a valid octal number: {text:?}"
                    ))
                })?,
        ),
    };
    Ok(KeyVaultObject {
        object: ObjectRef {
            kind,
            name,
            version,
        },
        path,
        pfx,
        encoding,
        mode,
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

    fn params(objects: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("keyvaultName".to_owned(), "kvname".to_owned()),
            ("tenantId".to_owned(), "tid".to_owned()),
            ("objects".to_owned(), objects.to_owned()),
        ])
    }

    #[test]
    fn the_plugins_objects_parse_as_it_reads_them() {
        let objects = "array:\n  - |\n    objectName: secret1\n    objectType: secret\n    objectVersion: \"\"\n  - |\n    objectName: cert1\n    objectAlias: \" cert1-pub \"\n    objectType: key\n  - |\n    objectName: p\n    objectType: secret\n    objectFormat: PFX\n    objectEncoding: base64\n    filePermission: \"0400\"\n";
        let config = parse(&params(objects)).unwrap();
        assert_eq!(config.login, Login::ServicePrincipal);
        assert_eq!(config.objects.len(), 3);
        assert_eq!(config.objects[0].path, "secret1");
        assert_eq!(config.objects[1].path, "cert1-pub");
        assert_eq!(config.objects[1].object.kind, ObjectType::Key);
        assert!(config.objects[2].pfx);
        assert_eq!(config.objects[2].encoding, Encoding::Base64);
        assert_eq!(config.objects[2].mode, Some(0o400));
    }

    #[test]
    fn bad_entries_name_what_is_wrong() {
        let cases = [
            (
                "objectName: s\n    objectType: secret\n    objectEncoding: SECRET_ALIAS",
                "invalid objectEncoding: SECRET_ALIAS",
            ),
            (
                "objectName: s\n    objectType: key\n    objectFormat: pfx",
                "PFX format only supported",
            ),
            (
                "objectName: s\n    objectType: blob",
                "Invalid vaultObjectTypes",
            ),
            (
                "objectName: s\n    objectType: secret\n    objectAlias: ../x",
                "not a safe file path",
            ),
            (
                "objectName: a/b\n    objectType: secret\n    objectAlias: x",
                "invalid objectName",
            ),
            (
                "objectName: s\n    objectType: secret\n    objectVersion: ../../keys",
                "invalid objectVersion",
            ),
            (
                "objectName: s\n    objectType: secret\n    filePermission: rw",
                "valid octal",
            ),
        ];
        for (entry, want) in cases {
            let objects = format!("array:\n  - |\n    {entry}\n");
            let err = parse(&params(&objects)).unwrap_err().to_string();
            assert!(err.contains(want), "{entry}: {err}");
        }
        let mut bad = params("array: []");
        bad.insert("keyvaultName".to_owned(), "evil.example.com/x".to_owned());
        assert!(
            parse(&bad)
                .unwrap_err()
                .to_string()
                .contains("Invalid vault name")
        );
        let mut pod_identity = params("array: []");
        pod_identity.insert("usePodIdentity".to_owned(), "true".to_owned());
        assert!(
            parse(&pod_identity)
                .unwrap_err()
                .to_string()
                .contains("workload identity")
        );
        let mut tenant = params("array: []");
        tenant.insert("tenantId".to_owned(), "t/../../x".to_owned());
        assert!(
            parse(&tenant)
                .unwrap_err()
                .to_string()
                .contains("invalid tenantId")
        );
    }
}
