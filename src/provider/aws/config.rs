//! SecretProviderClass parameters of the AWS provider (ASCP), parsed and validated before any
//! AWS call. Messages keep ASCP's wording, which users search for, and add which object and
//! field is wrong.

use std::collections::{BTreeMap, BTreeSet};

use serde::de::MapAccess;

use super::{NAME, jmes};
use crate::limits;
use crate::pod::PodInfo;
use crate::provider::yaml::{self, FoldedFields};
use crate::provider::{ProviderError, parse_go_bool};

/// The parameters this provider reads, which only the class may set (see
/// [`crate::provider::Provider::class_parameters`]).
pub const PARAMETERS: &[&str] = &[
    "region",
    "failoverRegion",
    "pathTranslation",
    "usePodIdentity",
    "preferredAddressType",
    "objects",
];

/// Checks a region name before it becomes part of an endpoint's host name.
pub fn check_region(region: &str, field: &str) -> Result<(), ProviderError> {
    let valid = !region.is_empty()
        && region.len() <= 64
        && region.split('-').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        });
    if valid {
        Ok(())
    } else {
        Err(invalid(format!(
            "{field} {region:?} is not an AWS region name such as us-east-1"
        )))
    }
}

/// Where an object lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// AWS Secrets Manager.
    SecretsManager,
    /// SSM Parameter Store.
    Parameter,
}

/// Which Pod Identity agent address to try (`preferredAddressType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressType {
    /// IPv4 first, then IPv6.
    Auto,
    /// Only the IPv4 agent address.
    Ipv4,
    /// Only the IPv6 agent address.
    Ipv6,
}

/// One stored value as asked of AWS: the unit of fetching, sharing and version skipping.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Read {
    /// Secrets Manager or SSM.
    pub kind: Kind,
    /// Name or ARN, as written in the class.
    pub name: String,
    /// Secrets Manager `VersionId` or SSM version number.
    pub version: Option<String>,
    /// Secrets Manager `VersionStage` or SSM label.
    pub label: Option<String>,
}

/// A field of the secret's JSON written as a file of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JmesEntry {
    /// The JMESPath expression.
    pub path: String,
    /// The file it is written to.
    pub alias: String,
    /// File mode; the parent object's when unset.
    pub mode: Option<u32>,
}

/// One `objects` entry, validated.
#[derive(Debug, Clone)]
pub struct Object {
    /// What to read in the primary region.
    pub read: Read,
    /// What to read in the failover region, when there is one.
    pub failover: Option<Read>,
    /// `objectAlias`, if set.
    pub alias: Option<String>,
    /// File name relative to the volume (the alias, else the translated name); also the
    /// object version's id.
    pub file: String,
    /// File mode, else the driver's default.
    pub mode: Option<u32>,
    /// Fields extracted into files of their own.
    pub jmes: Vec<JmesEntry>,
}

/// A volume's configuration.
#[derive(Debug, Clone)]
pub struct VolumeConfig {
    /// The region objects are read from.
    pub region: String,
    /// The region tried when the primary fails with a server error or timeout.
    pub failover_region: Option<String>,
    /// Exchange the pod's token with the EKS Pod Identity agent instead of STS (IRSA).
    pub use_pod_identity: bool,
    /// Pod Identity agent address family.
    pub address_type: AddressType,
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod_name: String,
    /// Pod service account.
    pub service_account: String,
    /// The objects, in class order.
    pub objects: Vec<Object>,
}

/// The class's `region` parameter, if set; the caller resolves a missing one.
pub fn region_parameter(parameters: &BTreeMap<String, String>) -> Option<String> {
    parameters
        .get("region")
        .map(|r| r.trim())
        .filter(|r| !r.is_empty())
        .map(str::to_owned)
}

/// Parses a volume's parameters; `region` is the resolved primary region.
pub fn parse(
    parameters: &BTreeMap<String, String>,
    region: &str,
    pod: &PodInfo,
) -> Result<VolumeConfig, ProviderError> {
    let get = |key: &str| {
        parameters
            .get(key)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    };
    check_region(region, "region")?;
    let failover_region = get("failoverRegion").map(str::to_owned);
    if let Some(failover) = &failover_region {
        check_region(failover, "failoverRegion")?;
    }
    if failover_region.as_deref() == Some(region) {
        return Err(invalid(format!(
            "{region}: failover region cannot be the same as the primary region; \
             set failoverRegion to another region or remove it"
        )));
    }
    let translation = match get("pathTranslation") {
        None => Some('_'),
        Some(text) if text.eq_ignore_ascii_case("false") => None,
        Some(text) if text.chars().count() == 1 => text.chars().next(),
        Some(text) => {
            return Err(invalid(format!(
                "pathTranslation must be either 'False' or a single character string, not {text:?}"
            )));
        }
    };
    let use_pod_identity = match get("usePodIdentity") {
        None => false,
        Some(text) => parse_go_bool(text).ok_or_else(|| {
            invalid(format!(
                "failed to parse usePodIdentity value {text:?}: use \"true\" or \"false\""
            ))
        })?,
    };
    let address_type = match get("preferredAddressType").map(str::to_ascii_lowercase) {
        Some(t) if t == "ipv4" => AddressType::Ipv4,
        Some(t) if t == "ipv6" => AddressType::Ipv6,
        Some(t) if t != "auto" => {
            tracing::warn!(
                preferred_address_type = %t,
                "unknown preferredAddressType, using auto (IPv4, then IPv6)"
            );
            AddressType::Auto
        }
        _ => AddressType::Auto,
    };
    let regions = Regions {
        primary: region,
        failover: failover_region.as_deref(),
    };
    let objects = parse_objects(get("objects").unwrap_or_default(), &regions, translation)?;
    Ok(VolumeConfig {
        region: region.to_owned(),
        failover_region,
        use_pod_identity,
        address_type,
        namespace: pod.namespace.clone(),
        pod_name: pod.name.clone(),
        service_account: pod.service_account.clone(),
        objects,
    })
}

fn invalid(message: String) -> ProviderError {
    ProviderError::InvalidParameters {
        provider: NAME.to_owned(),
        message,
    }
}

struct Regions<'a> {
    primary: &'a str,
    failover: Option<&'a str>,
}

#[derive(Default)]
struct RawObject {
    object_name: String,
    object_type: String,
    object_alias: String,
    object_version: String,
    object_version_label: String,
    file_permission: String,
    jmes_path: Vec<RawJmes>,
    failover_object: Option<RawFailover>,
}

impl FoldedFields for RawObject {
    const FIELDS: &'static [&'static str] = &[
        "objectName",
        "objectType",
        "objectAlias",
        "objectVersion",
        "objectVersionLabel",
        "filePermission",
        "jmesPath",
        "failoverObject",
    ];
    const EXPECTING: &'static str = "an objects entry";
    fn set<'de, A: MapAccess<'de>>(&mut self, field: usize, map: &mut A) -> Result<(), A::Error> {
        match field {
            0 => self.object_name = map.next_value()?,
            1 => self.object_type = map.next_value()?,
            2 => self.object_alias = map.next_value()?,
            3 => self.object_version = map.next_value()?,
            4 => self.object_version_label = map.next_value()?,
            5 => self.file_permission = map.next_value()?,
            6 => self.jmes_path = map.next_value()?,
            _ => self.failover_object = map.next_value()?,
        }
        Ok(())
    }
}

#[derive(Default)]
struct RawJmes {
    path: String,
    object_alias: String,
    file_permission: String,
}

impl FoldedFields for RawJmes {
    const FIELDS: &'static [&'static str] = &["path", "objectAlias", "filePermission"];
    const EXPECTING: &'static str = "a jmesPath entry";
    fn set<'de, A: MapAccess<'de>>(&mut self, field: usize, map: &mut A) -> Result<(), A::Error> {
        match field {
            0 => self.path = map.next_value()?,
            1 => self.object_alias = map.next_value()?,
            _ => self.file_permission = map.next_value()?,
        }
        Ok(())
    }
}

#[derive(Default)]
struct RawFailover {
    object_name: String,
    object_version: String,
    object_version_label: String,
}

impl FoldedFields for RawFailover {
    const FIELDS: &'static [&'static str] = &["objectName", "objectVersion", "objectVersionLabel"];
    const EXPECTING: &'static str = "a failoverObject";
    fn set<'de, A: MapAccess<'de>>(&mut self, field: usize, map: &mut A) -> Result<(), A::Error> {
        match field {
            0 => self.object_name = map.next_value()?,
            1 => self.object_version = map.next_value()?,
            _ => self.object_version_label = map.next_value()?,
        }
        Ok(())
    }
}

yaml::folded_deserialize!(RawObject, RawJmes, RawFailover);

fn parse_objects(
    text: &str,
    regions: &Regions<'_>,
    translation: Option<char>,
) -> Result<Vec<Object>, ProviderError> {
    let raw: Vec<Option<RawObject>> = yaml::objects(text).map_err(|err| {
        invalid(format!(
            "Failed to load SecretProviderClass: objects is not a YAML list of \
             {{objectName, objectType, objectAlias, objectVersion, objectVersionLabel, \
             filePermission, jmesPath, failoverObject}}: {err}"
        ))
    })?;
    if raw.is_empty() {
        return Err(invalid(
            "no objects: set the `objects` parameter to a YAML list with at least one objectName"
                .to_owned(),
        ));
    }
    let mut objects = Vec::with_capacity(raw.len());
    for (index, entry) in raw.into_iter().enumerate() {
        let Some(entry) = entry else {
            return Err(invalid(format!(
                "objects[{index}]: Empty descriptor entry in SecretProviderClass"
            )));
        };
        objects.push(
            parse_object(entry, regions, translation)
                .map_err(|message| invalid(format!("objects[{index}]: {message}")))?,
        );
    }
    check_duplicates(&objects)?;
    Ok(objects)
}

fn parse_object(
    raw: RawObject,
    regions: &Regions<'_>,
    translation: Option<char>,
) -> Result<Object, String> {
    let name = raw.object_name.trim().to_owned();
    if name.is_empty() {
        return Err("Object name must be specified (objectName)".to_owned());
    }
    let kind = object_kind(&name, raw.object_type.trim(), regions.primary)?;
    let version = non_empty(&raw.object_version);
    let label = non_empty(&raw.object_version_label);
    if kind == Kind::Parameter && version.is_some() && label.is_some() {
        return Err(format!(
            "ssm parameters can not specify both objectVersion and objectVersionLabel: {name}"
        ));
    }
    let alias = non_empty(&raw.object_alias);
    // ASCP translates the alias as well as the name.
    let file = translate(alias.as_deref().unwrap_or(&name), translation);
    check_traversal(&file, "objectAlias")?;
    check_file(&file, "objectAlias")?;
    let mode = permission(&raw.file_permission, "filePermission")?;

    let mut jmes = Vec::with_capacity(raw.jmes_path.len());
    for (index, entry) in raw.jmes_path.into_iter().enumerate() {
        let path = entry.path.trim().to_owned();
        if path.is_empty() {
            return Err(format!(
                "jmesPath[{index}]: Path must be specified for JMES object {name}"
            ));
        }
        let alias = translate(entry.object_alias.trim(), translation);
        if alias.is_empty() {
            return Err(format!(
                "jmesPath[{index}]: Object alias must be specified for JMES object {name} (path {path})"
            ));
        }
        jmes::check(&path).map_err(|reason| {
            // A path past the length bound is not repeated back; the reason gives its size.
            let shown = if path.len() <= limits::MAX_JMES_LEN {
                format!(": {path}.")
            } else {
                ".".to_owned()
            };
            format!("jmesPath[{index}].path: Invalid JMES Path{shown} {reason}")
        })?;
        check_traversal(&alias, &format!("jmesPath[{index}].objectAlias"))?;
        check_file(&alias, &format!("jmesPath[{index}].objectAlias"))?;
        let mode = permission(
            &entry.file_permission,
            &format!("jmesPath[{index}].filePermission"),
        )?;
        jmes.push(JmesEntry { path, alias, mode });
    }

    let failover = match (raw.failover_object, regions.failover) {
        (Some(_), None) => {
            return Err(format!(
                "failover object allowed only when failover region is defined: {name}; \
                 set the failoverRegion parameter or remove failoverObject"
            ));
        }
        (Some(object), Some(region)) => {
            if alias.is_none() {
                return Err(format!(
                    "object alias must be specified for objects with failover entries: {name}"
                ));
            }
            if non_empty(&object.object_version) != version {
                return Err(format!(
                    "object versions must match between primary and failover regions: {name}"
                ));
            }
            let failover_name = object.object_name.trim().to_owned();
            if failover_name.is_empty() {
                return Err(format!(
                    "failoverObject.objectName: Object name must be specified for the failover of {name}"
                ));
            }
            let failover_kind = object_kind(&failover_name, raw.object_type.trim(), region)?;
            if failover_kind != kind {
                return Err(format!(
                    "failoverObject.objectName: objectType does not match ARN: {failover_name}"
                ));
            }
            Some(Read {
                kind,
                name: failover_name,
                version: non_empty(&object.object_version),
                label: non_empty(&object.object_version_label).or_else(|| label.clone()),
            })
        }
        (None, Some(region)) => {
            if name.starts_with("arn:") {
                check_arn_region(&name, region)?;
            }
            Some(Read {
                kind,
                name: name.clone(),
                version: version.clone(),
                label: label.clone(),
            })
        }
        (None, None) => None,
    };

    Ok(Object {
        read: Read {
            kind,
            name,
            version,
            label,
        },
        failover,
        alias,
        file,
        mode,
        jmes,
    })
}

/// The object's kind from its ARN or `objectType`, checking that they agree and that an ARN
/// names `region`.
fn object_kind(name: &str, object_type: &str, region: &str) -> Result<Kind, String> {
    let declared = match object_type {
        "" => None,
        "secretsmanager" => Some(Kind::SecretsManager),
        "ssmparameter" => Some(Kind::Parameter),
        other => {
            return Err(format!(
                "Invalid objectType: {other}; use secretsmanager or ssmparameter"
            ));
        }
    };
    if !name.starts_with("arn:") {
        return declared.ok_or_else(|| {
            format!(
                "Must use objectType when a full ARN is not specified: {name}; \
                 add objectType: secretsmanager or objectType: ssmparameter"
            )
        });
    }
    let parts: Vec<&str> = name.splitn(6, ':').collect();
    if parts.len() != 6 || parts[2].is_empty() || parts[5].is_empty() {
        return Err(format!(
            "Invalid ARN format in object name: {name}; expected arn:aws:<service>:<region>:<account>:<resource>"
        ));
    }
    let from_arn = match parts[2] {
        "secretsmanager" => Kind::SecretsManager,
        "ssm" => Kind::Parameter,
        other => {
            return Err(format!(
                "Invalid service in ARN: {other}; use a secretsmanager or ssm ARN"
            ));
        }
    };
    if declared.is_some_and(|d| d != from_arn) {
        return Err(format!("objectType does not match ARN: {name}"));
    }
    check_arn_region(name, region)?;
    Ok(from_arn)
}

fn check_arn_region(arn: &str, region: &str) -> Result<(), String> {
    match arn.split(':').nth(3) {
        Some(arn_region) if arn_region == region => Ok(()),
        _ => Err(format!("ARN region must match region {region}: {arn}")),
    }
}

/// ASCP's file name: `/` replaced by the translation character, or kept (leading ones
/// dropped) when translation is off.
fn translate(name: &str, translation: Option<char>) -> String {
    match translation {
        Some(c) => name.replace('/', &c.to_string()),
        None => name.trim_start_matches('/').to_owned(),
    }
}

/// Refuses `..` as a path segment (`foo..` and `..foo` are ordinary names).
fn check_traversal(path: &str, field: &str) -> Result<(), String> {
    if path.split('/').any(|segment| segment == "..") {
        return Err(format!("{field}: path can not contain ../: {path}"));
    }
    Ok(())
}

/// The rules every file in a volume follows, checked here so a bad name is the class's
/// error (InvalidArgument), named by its field.
fn check_file(path: &str, field: &str) -> Result<(), String> {
    limits::check_file_path(path).map_err(|why| format!("{field}: {path:?}: {why}"))
}

fn permission(text: &str, field: &str) -> Result<Option<u32>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let valid = text.len() == 4 && text.bytes().all(|b| (b'0'..=b'7').contains(&b));
    if !valid {
        return Err(format!(
            "{field}: Invalid File Permission: {text}; use 4 octal digits such as \"0640\""
        ));
    }
    // The first digit (setuid, setgid, sticky) is dropped, as upstream's writer drops it.
    Ok(u32::from_str_radix(text, 8).ok().map(|mode| mode & 0o777))
}

fn non_empty(text: &str) -> Option<String> {
    Some(text.trim())
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
}

/// ASCP's duplicate rules (one name may be listed again only with another alias or version
/// label; aliases are unique), plus one it lacks: no two files with one name.
fn check_duplicates(objects: &[Object]) -> Result<(), ProviderError> {
    let mut by_name: BTreeMap<&str, Vec<&Object>> = BTreeMap::new();
    for object in objects {
        by_name.entry(&object.read.name).or_default().push(object);
    }
    for (name, group) in &by_name {
        for (i, a) in group.iter().enumerate() {
            for b in &group[i + 1..] {
                if a.alias != b.alias || a.read.label != b.read.label {
                    continue;
                }
                let alias_part = match &a.alias {
                    Some(alias) => format!("duplicate object alias {alias}"),
                    None => "no object alias".to_owned(),
                };
                let label_part = match &a.read.label {
                    Some(label) => format!("duplicate version label {label}"),
                    None => "no version label".to_owned(),
                };
                return Err(invalid(format!(
                    "found descriptor with duplicate object name {name}, {alias_part}, and {label_part}; \
                     give each entry its own objectAlias"
                )));
            }
        }
    }
    let mut files = BTreeSet::new();
    for object in objects {
        if !files.insert(object.file.as_str()) {
            return Err(invalid(format!(
                "found duplicate object alias {}: two objects would be written to the same file; \
                 give each its own objectAlias",
                object.file
            )));
        }
    }
    for object in objects {
        for entry in &object.jmes {
            if !files.insert(entry.alias.as_str()) {
                return Err(invalid(format!(
                    "Name already in use for objectAlias: found duplicate object alias {} in JMES path entry {}",
                    entry.alias, entry.path
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_objects_text(objects: &str) -> Result<VolumeConfig, String> {
        let parameters = BTreeMap::from([("objects".to_owned(), objects.to_owned())]);
        parse(&parameters, "us-east-1", &PodInfo::default()).map_err(|e| e.to_string())
    }

    fn error(objects: &str) -> String {
        parse_objects_text(objects).unwrap_err()
    }

    fn untranslated(objects: &str) -> Result<VolumeConfig, String> {
        let parameters = BTreeMap::from([
            ("objects".to_owned(), objects.to_owned()),
            ("pathTranslation".to_owned(), "False".to_owned()),
        ]);
        parse(&parameters, "us-east-1", &PodInfo::default()).map_err(|e| e.to_string())
    }

    #[test]
    fn aliases_are_translated_and_keys_match_ignoring_case_as_in_ascp() {
        // ASCP's own integration test class spells keys in lower case.
        let config = parse_objects_text(
            "- objectname: app/json\n  objecttype: secretsmanager\n  objectalias: conf/app\n  \
             FILEPERMISSION: '1640'\n  jmespath:\n    - {path: user, objectalias: db/user}\n  \
             unknownKey: ignored\n",
        )
        .unwrap();
        let object = &config.objects[0];
        assert_eq!(object.read.name, "app/json");
        assert_eq!(object.file, "conf_app");
        assert_eq!(object.mode, Some(0o640), "the high digit is dropped");
        assert_eq!(object.jmes[0].alias, "db_user");

        let config = untranslated(
            "- {objectName: /app/x, objectType: ssmparameter, objectAlias: /dir/x, \
             jmesPath: [{path: a, objectAlias: /dir/a}]}",
        )
        .unwrap();
        assert_eq!(config.objects[0].file, "dir/x");
        assert_eq!(config.objects[0].jmes[0].alias, "dir/a");
        // Translation turns a traversal into a plain name; without it, it is refused.
        parse_objects_text("- {objectName: x, objectType: secretsmanager, objectAlias: a/../b}")
            .unwrap();
        for objects in [
            "- {objectName: x, objectType: secretsmanager, objectAlias: a/../b}",
            "- {objectName: x, objectType: secretsmanager, jmesPath: [{path: a, objectAlias: ../a}]}",
        ] {
            let message = untranslated(objects).unwrap_err();
            assert!(message.contains("path can not contain ../"), "{message}");
        }
        let message = error("- {objectName: x, objectname: y, objectType: secretsmanager}");
        assert!(message.contains("objectName is given twice"), "{message}");
    }

    #[test]
    fn file_names_follow_alias_then_translated_name() {
        let config = parse_objects_text(
            "- {objectName: /app/db, objectType: ssmparameter}\n\
             - {objectName: app/key, objectType: secretsmanager, objectAlias: key.pem}\n\
             - {objectName: 'arn:aws:secretsmanager:us-east-1:1:secret:x-AbC'}",
        )
        .unwrap();
        let files: Vec<&str> = config.objects.iter().map(|o| o.file.as_str()).collect();
        assert_eq!(
            files,
            [
                "_app_db",
                "key.pem",
                "arn:aws:secretsmanager:us-east-1:1:secret:x-AbC"
            ]
        );
        assert_eq!(config.objects[2].read.kind, Kind::SecretsManager);

        let mut parameters = BTreeMap::from([
            (
                "objects".to_owned(),
                "- {objectName: /app/db, objectType: ssmparameter}".to_owned(),
            ),
            ("pathTranslation".to_owned(), "False".to_owned()),
        ]);
        let config = parse(&parameters, "us-east-1", &PodInfo::default()).unwrap();
        assert_eq!(config.objects[0].file, "app/db");
        parameters.insert("pathTranslation".to_owned(), "-".to_owned());
        assert_eq!(
            parse(&parameters, "us-east-1", &PodInfo::default())
                .unwrap()
                .objects[0]
                .file,
            "-app-db"
        );
    }

    #[test]
    fn descriptor_errors_use_ascps_wording_and_name_the_object() {
        for (objects, expected) in [
            (
                "- {objectType: secretsmanager}",
                "objects[0]: Object name must be specified",
            ),
            (
                "- {objectName: x}",
                "Must use objectType when a full ARN is not specified: x",
            ),
            (
                "- {objectName: x, objectType: vault}",
                "Invalid objectType: vault",
            ),
            (
                "- {objectName: 'arn:aws:s3:us-east-1:1:x'}",
                "Invalid service in ARN: s3",
            ),
            (
                "- {objectName: 'arn:aws:secretsmanager'}",
                "Invalid ARN format in object name",
            ),
            (
                "- {objectName: 'arn:aws:ssm:us-east-1:1:parameter/x', objectType: secretsmanager}",
                "objectType does not match ARN",
            ),
            (
                "- {objectName: 'arn:aws:ssm:eu-west-1:1:parameter/x'}",
                "ARN region must match region us-east-1",
            ),
            (
                "- {objectName: p, objectType: ssmparameter, objectVersion: '1', objectVersionLabel: l}",
                "ssm parameters can not specify both objectVersion and objectVersionLabel: p",
            ),
            (
                "- {objectName: x, objectType: secretsmanager, filePermission: '644'}",
                "Invalid File Permission: 644",
            ),
            (
                "- {objectName: x, objectType: secretsmanager, filePermission: '0800'}",
                "Invalid File Permission: 0800",
            ),
            (
                "- {objectName: x, objectType: secretsmanager, objectAlias: ..}",
                "path can not contain ../",
            ),
            (
                "- {objectName: x, objectType: secretsmanager, jmesPath: [{objectAlias: a}]}",
                "jmesPath[0]: Path must be specified for JMES object x",
            ),
            (
                "- {objectName: x, objectType: secretsmanager, jmesPath: [{path: a}]}",
                "Object alias must be specified for JMES object x",
            ),
            ("- ", "Empty descriptor entry in SecretProviderClass"),
            ("array:\n  - x", "Failed to load SecretProviderClass"),
            ("[]", "no objects"),
        ] {
            let message = error(objects);
            assert!(message.contains(expected), "{objects}: {message}");
            assert!(message.starts_with("provider \"aws\""), "{message}");
        }
    }

    #[test]
    fn dots_inside_names_are_not_traversal() {
        parse_objects_text(
            "- {objectName: x, objectType: secretsmanager, objectAlias: a/..foo}\n\
             - {objectName: y, objectType: secretsmanager, objectAlias: foo..}",
        )
        .unwrap();
        // Not traversal, but `..` starts the writer's own names (`..data`): refused as the
        // upstream driver refuses it, here before any AWS call.
        let message = error("- {objectName: x, objectType: secretsmanager, objectAlias: ..foo}");
        assert!(!message.contains("path can not contain ../"), "{message}");
        assert!(message.contains("reserved for the writer"), "{message}");
    }

    #[test]
    fn hostile_names_regions_and_expressions_fail_before_any_call() {
        let deep = vec!["d"; 2000].join("/");
        let message = untranslated(&format!(
            "- {{objectName: x, objectType: secretsmanager, objectAlias: {deep}}}"
        ))
        .unwrap_err();
        assert!(message.contains("16 directories deep"), "{message}");
        let nested = format!("{}a{}", "(".repeat(3000), ")".repeat(3000));
        let message = error(&format!(
            "- objectName: x\n  objectType: secretsmanager\n  jmesPath:\n    - path: '{nested}'\n      objectAlias: f\n"
        ));
        assert!(
            message.contains("jmesPath[0].path: Invalid JMES Path"),
            "{message}"
        );
        for region in [
            "evil.example.com#",
            "US-EAST-1",
            "",
            "a--b",
            &"a".repeat(65),
        ] {
            let parameters = BTreeMap::from([(
                "objects".to_owned(),
                "- {objectName: x, objectType: secretsmanager}".to_owned(),
            )]);
            assert!(
                parse(&parameters, region, &PodInfo::default()).is_err(),
                "{region:?}"
            );
        }
        let many: String = (0..=crate::limits::MAX_FILES)
            .map(|i| format!("- {{objectName: s{i}, objectType: secretsmanager}}\n"))
            .collect();
        assert!(error(&many).contains("at most 1000 objects"));
    }

    #[test]
    fn duplicates_follow_ascps_matrix() {
        let sm = |extra: &str| format!("- {{objectName: n, objectType: secretsmanager{extra}}}\n");
        for (objects, expected) in [
            (
                sm("") + &sm(""),
                Some("duplicate object name n, no object alias, and no version label"),
            ),
            (
                sm(", objectAlias: a") + &sm(", objectAlias: a"),
                Some("duplicate object name n, duplicate object alias a, and no version label"),
            ),
            (
                sm(", objectVersionLabel: L") + &sm(", objectVersionLabel: L"),
                Some("duplicate object name n, no object alias, and duplicate version label L"),
            ),
            (
                sm(", objectAlias: a, objectVersionLabel: L")
                    + &sm(", objectAlias: a, objectVersionLabel: L"),
                Some("duplicate object alias a, and duplicate version label L"),
            ),
            (sm(", objectAlias: a") + &sm(", objectAlias: b"), None),
            (
                sm(", objectAlias: a") + &sm(", objectAlias: b, objectVersionLabel: AWSPREVIOUS"),
                None,
            ),
            // Two names into one file: ASCP writes one over the other; refused here.
            (
                sm(", objectAlias: a")
                    + "- {objectName: m, objectType: secretsmanager, objectAlias: a}\n",
                Some("found duplicate object alias a"),
            ),
            (
                sm(", objectAlias: a, jmesPath: [{path: x, objectAlias: a}]"),
                Some(
                    "Name already in use for objectAlias: found duplicate object alias a in JMES path entry x",
                ),
            ),
        ] {
            match (parse_objects_text(&objects), expected) {
                (Ok(_), None) => {}
                (Err(message), Some(expected)) => {
                    assert!(message.contains(expected), "{objects}: {message}")
                }
                (outcome, _) => panic!("{objects}: {outcome:?}"),
            }
        }
    }

    #[test]
    fn failover_entries_are_checked_against_the_failover_region() {
        let parse_with = |objects: &str| {
            let parameters = BTreeMap::from([
                ("objects".to_owned(), objects.to_owned()),
                ("failoverRegion".to_owned(), "us-west-2".to_owned()),
            ]);
            parse(&parameters, "us-east-1", &PodInfo::default()).map_err(|e| e.to_string())
        };
        let config = parse_with(
            "- {objectName: 'arn:aws:secretsmanager:us-east-1:1:secret:db-AbC', objectAlias: db, \
               failoverObject: {objectName: 'arn:aws:secretsmanager:us-west-2:1:secret:db-XyZ'}}\n\
             - {objectName: plain, objectType: ssmparameter, objectVersionLabel: prod}",
        )
        .unwrap();
        assert_eq!(config.failover_region.as_deref(), Some("us-west-2"));
        let failover = config.objects[0].failover.as_ref().unwrap();
        assert_eq!(
            failover.name,
            "arn:aws:secretsmanager:us-west-2:1:secret:db-XyZ"
        );
        assert_eq!(
            config.objects[1]
                .failover
                .as_ref()
                .unwrap()
                .label
                .as_deref(),
            Some("prod")
        );

        for (objects, expected) in [
            (
                "- {objectName: 'arn:aws:secretsmanager:us-east-1:1:secret:db', failoverObject: {objectName: x}}",
                "object alias must be specified for objects with failover entries",
            ),
            (
                "- {objectName: s, objectType: secretsmanager, objectAlias: a, objectVersion: v1, failoverObject: {objectName: t}}",
                "object versions must match between primary and failover regions: s",
            ),
            (
                "- {objectName: 'arn:aws:secretsmanager:us-east-1:1:secret:db', objectAlias: a, \
                   failoverObject: {objectName: 'arn:aws:secretsmanager:us-east-1:1:secret:db'}}",
                "ARN region must match region us-west-2",
            ),
            (
                "- {objectName: 'arn:aws:secretsmanager:us-east-1:1:secret:db'}",
                "ARN region must match region us-west-2",
            ),
        ] {
            let message = parse_with(objects).unwrap_err();
            assert!(message.contains(expected), "{objects}: {message}");
        }
    }

    #[test]
    fn top_level_parameters_are_parsed_like_ascp() {
        let with = |key: &str, value: &str| {
            let parameters = BTreeMap::from([
                (
                    "objects".to_owned(),
                    "- {objectName: x, objectType: secretsmanager}".to_owned(),
                ),
                (key.to_owned(), value.to_owned()),
            ]);
            parse(&parameters, "us-east-1", &PodInfo::default()).map_err(|e| e.to_string())
        };
        assert!(with("usePodIdentity", "True").unwrap().use_pod_identity);
        assert!(!with("usePodIdentity", "0").unwrap().use_pod_identity);
        assert!(
            with("usePodIdentity", "yes")
                .unwrap_err()
                .contains("failed to parse usePodIdentity")
        );
        assert_eq!(
            with("preferredAddressType", "IPv6").unwrap().address_type,
            AddressType::Ipv6
        );
        assert_eq!(
            with("preferredAddressType", "bogus").unwrap().address_type,
            AddressType::Auto
        );
        assert!(
            with("failoverRegion", "us-east-1")
                .unwrap_err()
                .contains("cannot be the same")
        );
        assert!(
            with("pathTranslation", "ab")
                .unwrap_err()
                .contains("single character")
        );
    }
}
