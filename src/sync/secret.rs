//! One `secretObjects` entry: the Secret it describes, built from the mounted files, and the
//! write that creates or updates it with its owners in the same request.

use std::collections::BTreeMap;
use std::time::SystemTime;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret as KubeSecret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Api;
use kube::api::{DeleteParams, PostParams, Preconditions};

use super::files::{FilesError, MountedVolume};
use super::tls::{self, TlsError};
use crate::crd::SecretObject;
use crate::error::kube_message;
use crate::redact::Secret;

/// Marks Secrets this driver owns; a Secret without it is never overwritten.
pub const MANAGED_LABEL: &str = "secrets-store.csi.k8s.io/managed";
/// When the mounted contents a Secret was last written from were swapped in: a pod whose
/// mount is older (not yet rotated) never overwrites data from a newer one.
pub const CONTENT_TIME_ANNOTATION: &str = "secrets-store.csi.k8s.io/content-time";
/// The Secret type whose keys are split out of a PEM bundle.
const TLS_TYPE: &str = "kubernetes.io/tls";
/// How far ahead of this node's clock another node's content time may be.
const CLOCK_SKEW_SECS: i64 = 60;
/// Optimistic-lock retries against other writers.
const CONFLICT_RETRIES: usize = 5;

/// A `secretObjects` entry that cannot become a Secret.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    /// `secretName` is empty.
    #[error("secretName is empty; set the name of the Secret to create")]
    MissingName,
    /// `type` is empty.
    #[error("type is empty; set it, e.g. Opaque or kubernetes.io/tls")]
    MissingType,
    /// `data` is empty.
    #[error("data is empty; list at least one objectName and key")]
    MissingData,
    /// A `data` entry without `objectName`.
    #[error("data[{0}].objectName is empty")]
    EmptyObjectName(usize),
    /// A `data` entry without `key`.
    #[error("data[{0}].key is empty")]
    EmptyKey(usize),
    /// A TLS Secret key other than the two Kubernetes defines.
    #[error(
        "data[{index}].key {key:?} is not supported for type kubernetes.io/tls; only tls.crt and tls.key are"
    )]
    TlsKey {
        /// Position in `data`.
        index: usize,
        /// The key.
        key: String,
    },
    /// The mounted file is missing or unreadable.
    #[error("data[{index}]: {source}")]
    File {
        /// Position in `data`.
        index: usize,
        /// Why.
        #[source]
        source: FilesError,
    },
    /// The TLS bundle cannot be split.
    #[error("data[{index}] (objectName {object_name}): {source}")]
    Tls {
        /// Position in `data`.
        index: usize,
        /// The mounted file.
        object_name: String,
        /// Why.
        #[source]
        source: TlsError,
    },
}

impl EntryError {
    /// The metric `error_type`.
    pub fn error_type(&self) -> &'static str {
        match self {
            Self::File { .. } => "FileNotFound",
            Self::Tls { .. } => "InvalidTLSBundle",
            _ => "InvalidSecretObject",
        }
    }
}

/// The Secret an entry describes.
#[derive(Debug)]
pub struct Desired {
    /// `secretName`.
    pub name: String,
    type_: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    data: Secret<BTreeMap<String, ByteString>>,
}

/// Builds the Secret of `entry` from the files of `volume`.
pub fn build(entry: &SecretObject, volume: &MountedVolume) -> Result<Desired, EntryError> {
    if entry.secret_name.is_empty() {
        return Err(EntryError::MissingName);
    }
    if entry.type_.is_empty() {
        return Err(EntryError::MissingType);
    }
    if entry.data.is_empty() {
        return Err(EntryError::MissingData);
    }
    let tls_type = entry.type_ == TLS_TYPE;
    let mut data = BTreeMap::new();
    for (index, item) in entry.data.iter().enumerate() {
        if item.object_name.is_empty() {
            return Err(EntryError::EmptyObjectName(index));
        }
        if item.key.is_empty() {
            return Err(EntryError::EmptyKey(index));
        }
        let contents = volume
            .read(&item.object_name)
            .map_err(|source| EntryError::File { index, source })?;
        let value = if tls_type {
            let split = match item.key.as_str() {
                "tls.crt" => tls::certificates(contents.expose()),
                "tls.key" => tls::private_key(contents.expose()),
                other => {
                    return Err(EntryError::TlsKey {
                        index,
                        key: other.to_owned(),
                    });
                }
            };
            split.map_err(|source| EntryError::Tls {
                index,
                object_name: item.object_name.clone(),
                source,
            })?
        } else {
            contents.into_inner()
        };
        data.insert(item.key.clone(), ByteString(value));
    }
    let mut labels = entry.labels.clone();
    labels.insert(MANAGED_LABEL.to_owned(), "true".to_owned());
    Ok(Desired {
        name: entry.secret_name.clone(),
        type_: entry.type_.clone(),
        labels,
        annotations: entry.annotations.clone(),
        data: Secret::new(data),
    })
}

/// What a write did.
#[derive(Debug, Clone, PartialEq)]
pub enum Written {
    /// The Secret did not exist.
    Created,
    /// The Secret changed; `data_changed` says whether its values did.
    Updated {
        /// Whether `data` differs from before.
        data_changed: bool,
        /// The Secret's owners after the write, for a rollout.
        owners: Vec<OwnerReference>,
    },
    /// Already as desired.
    Unchanged,
}

/// A Secret that could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// A Secret of that name exists and is not ours.
    #[error(
        "Secret {namespace}/{name} already exists and is not managed by the driver (it lacks the label \
         secrets-store.csi.k8s.io/managed=true); it was left unchanged: rename secretName or delete that Secret"
    )]
    NotManaged {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// RBAC does not allow the driver to manage Secrets.
    #[error(
        "the driver may not manage Secrets ({}); enable sync with the Helm value \
         syncSecret.enabled=true, or apply the ClusterRole secretprovidersyncing-role and its binding from deploy/",
        kube_message(source)
    )]
    Forbidden {
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The API server refused or could not be reached.
    #[error("failed to write Secret {namespace}/{name}: {}", kube_message(source))]
    Api {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
}

impl WriteError {
    /// The metric `error_type`.
    pub fn error_type(&self) -> &'static str {
        match self {
            Self::NotManaged { .. } => "SecretNotManaged",
            Self::Forbidden { .. } => "Forbidden",
            Self::Api { .. } => "APIError",
        }
    }
}

/// Creates or updates `desired` in `namespace` with `owner` among its owners, in one request
/// per attempt: there is never a moment when a synced Secret has no owner. Also returns the
/// resourceVersion written, if any.
pub async fn write(
    client: &kube::Client,
    namespace: &str,
    desired: &Desired,
    owner: &OwnerReference,
    content_time: SystemTime,
) -> Result<(Written, Option<String>), WriteError> {
    let api: Api<KubeSecret> = Api::namespaced(client.clone(), namespace);
    let api_error = |source: kube::Error| match &source {
        kube::Error::Api(status) if status.code == 403 => WriteError::Forbidden { source },
        _ => WriteError::Api {
            namespace: namespace.to_owned(),
            name: desired.name.clone(),
            source,
        },
    };
    let time = jiff::Timestamp::try_from(content_time).unwrap_or_else(|_| jiff::Timestamp::now());
    let mut attempt = 0;
    loop {
        attempt += 1;
        let retry = attempt <= CONFLICT_RETRIES;
        let existing = api.get_opt(&desired.name).await.map_err(api_error)?;
        let result = match existing {
            None => create(&api, namespace, desired, vec![owner.clone()], time)
                .await
                .map(|rv| (Written::Created, rv)),
            Some(existing) => {
                let managed = existing
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(MANAGED_LABEL))
                    .is_some_and(|v| v == "true");
                if !managed {
                    return Err(WriteError::NotManaged {
                        namespace: namespace.to_owned(),
                        name: desired.name.clone(),
                    });
                }
                update(&api, namespace, desired, existing, owner, time).await
            }
        };
        match result {
            Err(kube::Error::Api(status))
                if retry && (status.code == 409 || status.code == 404) => {}
            other => return other.map_err(api_error),
        }
    }
}

async fn create(
    api: &Api<KubeSecret>,
    namespace: &str,
    desired: &Desired,
    owners: Vec<OwnerReference>,
    time: jiff::Timestamp,
) -> Result<Option<String>, kube::Error> {
    let mut annotations = desired.annotations.clone();
    annotations.insert(CONTENT_TIME_ANNOTATION.to_owned(), time.to_string());
    let secret = KubeSecret {
        metadata: ObjectMeta {
            name: Some(desired.name.clone()),
            namespace: Some(namespace.to_owned()),
            labels: Some(desired.labels.clone()),
            annotations: Some(annotations),
            owner_references: Some(owners),
            ..Default::default()
        },
        type_: Some(desired.type_.clone()),
        data: Some(desired.data.expose().clone()),
        ..Default::default()
    };
    let created = api.create(&PostParams::default(), &secret).await?;
    Ok(created.metadata.resource_version)
}

async fn update(
    api: &Api<KubeSecret>,
    namespace: &str,
    desired: &Desired,
    existing: KubeSecret,
    owner: &OwnerReference,
    time: jiff::Timestamp,
) -> Result<(Written, Option<String>), kube::Error> {
    let mut owners = existing
        .metadata
        .owner_references
        .clone()
        .unwrap_or_default();
    if !owners.iter().any(|o| o.uid == owner.uid) {
        owners.push(owner.clone());
    }
    if existing.type_.as_deref().unwrap_or("Opaque") != desired.type_ {
        // The type of a Secret cannot change: replace ours, keeping every owner.
        let uid = existing.metadata.uid.clone();
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid,
                resource_version: None,
            }),
            ..Default::default()
        };
        api.delete(&desired.name, &params).await?;
        let rv = create(api, namespace, desired, owners, time).await?;
        return Ok((Written::Created, rv));
    }
    let recorded = existing
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(CONTENT_TIME_ANNOTATION))
        .and_then(|t| t.parse::<jiff::Timestamp>().ok());
    // A pod that has not rotated yet keeps its owner on the Secret but not its older data. A
    // recorded time in the future was not written by a driver (anyone who may edit the
    // Secret can set it): it is ignored, so the Secret is still repaired.
    let now = jiff::Timestamp::now();
    let stale = recorded.is_some_and(|recorded| {
        recorded > time && recorded <= now + jiff::SignedDuration::from_secs(CLOCK_SKEW_SECS)
    });
    let mut updated = existing.clone();
    updated
        .metadata
        .labels
        .get_or_insert_default()
        .extend(desired.labels.clone());
    let annotations = updated.metadata.annotations.get_or_insert_default();
    annotations.extend(desired.annotations.clone());
    if !stale {
        annotations.insert(CONTENT_TIME_ANNOTATION.to_owned(), time.to_string());
        updated.data = Some(desired.data.expose().clone());
    }
    updated.metadata.owner_references = Some(owners.clone());
    if updated == existing {
        return Ok((Written::Unchanged, None));
    }
    let data_changed = updated.data != existing.data;
    let replaced = api
        .replace(&desired.name, &PostParams::default(), &updated)
        .await?;
    Ok((
        Written::Updated {
            data_changed,
            owners,
        },
        replaced.metadata.resource_version,
    ))
}
