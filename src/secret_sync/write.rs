//! The write of a SecretSync's Secret, with only `create` and `patch` on Secrets: a Secret is
//! created owned by its SecretSync, and afterwards changed only by a JSON patch whose first
//! operation tests that owner's UID, so a Secret the controller did not create (or one of
//! another SecretSync) is never changed, and the controller never needs to read Secrets.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret as KubeSecret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

use crate::error::kube_message;
use crate::redact::Secret;

/// Label naming the SecretSync a Secret belongs to (upstream's API documentation).
pub const SECRET_SYNC_LABEL: &str = "secrets-store.sync.x-k8s.io/secretsync";
/// Label upstream's controller sets (empty value), kept so Secrets move between them.
pub const CONTROLLER_LABEL: &str = "secrets-store.sync.x-k8s.io";
/// Optimistic-lock retries against other writers.
const CONFLICT_RETRIES: usize = 5;

/// The Secret a SecretSync describes.
#[derive(Debug)]
pub struct Desired {
    /// Namespace.
    pub namespace: String,
    /// Name (the SecretSync's).
    pub name: String,
    /// Type.
    pub type_: String,
    /// Labels, the controller's included.
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
    /// Data.
    pub data: Secret<BTreeMap<String, ByteString>>,
    /// The SecretSync.
    pub owner: OwnerReference,
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The Secret did not exist.
    Created,
    /// The Secret changed.
    Updated,
    /// Already as desired.
    Unchanged,
}

/// A Secret that could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// A Secret of that name exists and this SecretSync does not own it.
    #[error(
        "Secret {namespace}/{name} already exists and is not owned by this SecretSync; it was left \
         unchanged: delete it to have it created, or rename the SecretSync ({message})"
    )]
    NotOwned {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// The API server's refusal.
        message: String,
    },
    /// The type of an existing Secret cannot change.
    #[error(
        "Secret {namespace}/{name} has type {existing:?}, the SecretSync asks for {desired:?}; a \
         Secret's type cannot change: delete the Secret to have it created with the new type"
    )]
    TypeChanged {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// The Secret's type.
        existing: String,
        /// `secretObject.type`.
        desired: String,
    },
    /// The API server refused or could not be reached.
    #[error("failed to patch secret {name:?}: {message}")]
    Api {
        /// Name.
        name: String,
        /// The API server's message.
        message: String,
    },
}

/// Creates `desired`, or updates it if its owner is `desired.owner`.
pub async fn write(client: &kube::Client, desired: &Desired) -> Result<Written, WriteError> {
    let api: Api<KubeSecret> = Api::namespaced(client.clone(), &desired.namespace);
    let api_error = |err: &kube::Error| WriteError::Api {
        name: desired.name.clone(),
        message: kube_message(err),
    };
    let params = PatchParams::default();
    let mut attempt = 0;
    loop {
        attempt += 1;
        match api.create(&PostParams::default(), &secret(desired)).await {
            Ok(_) => return Ok(Written::Created),
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(err) => return Err(api_error(&err)),
        }
        // Proves ownership and returns the Secret; changes nothing.
        let guard = json!([{
            "op": "test",
            "path": "/metadata/ownerReferences/0/uid",
            "value": desired.owner.uid,
        }]);
        let existing = match api.patch(&desired.name, &params, &json_patch(guard)).await {
            Ok(existing) => existing,
            Err(kube::Error::Api(status)) if status.code == 404 && attempt <= CONFLICT_RETRIES => {
                continue;
            }
            Err(kube::Error::Api(status)) if status.code == 422 || status.code == 403 => {
                return Err(WriteError::NotOwned {
                    namespace: desired.namespace.clone(),
                    name: desired.name.clone(),
                    message: status.message,
                });
            }
            Err(err) => return Err(api_error(&err)),
        };
        let existing_type = existing
            .type_
            .clone()
            .unwrap_or_else(|| "Opaque".to_owned());
        if existing_type != desired.type_ {
            return Err(WriteError::TypeChanged {
                namespace: desired.namespace.clone(),
                name: desired.name.clone(),
                existing: existing_type,
                desired: desired.type_.clone(),
            });
        }
        let mut labels = existing.metadata.labels.clone().unwrap_or_default();
        labels.extend(desired.labels.clone());
        let mut annotations = existing.metadata.annotations.clone().unwrap_or_default();
        annotations.extend(desired.annotations.clone());
        let data = desired.data.expose();
        if Some(&labels) == existing.metadata.labels.as_ref()
            && annotations == existing.metadata.annotations.clone().unwrap_or_default()
            && existing.data.as_ref().unwrap_or(&BTreeMap::new()) == data
        {
            return Ok(Written::Unchanged);
        }
        let update = json!([
            {"op": "test", "path": "/metadata/ownerReferences/0/uid", "value": desired.owner.uid},
            {"op": "test", "path": "/metadata/resourceVersion", "value": existing.metadata.resource_version},
            {"op": "add", "path": "/metadata/labels", "value": labels},
            {"op": "add", "path": "/metadata/annotations", "value": annotations},
            {"op": "add", "path": "/data", "value": data},
        ]);
        match api.patch(&desired.name, &params, &json_patch(update)).await {
            Ok(_) => return Ok(Written::Updated),
            // Changed or replaced since the guard: look again.
            Err(kube::Error::Api(status))
                if (status.code == 422 || status.code == 404 || status.code == 409)
                    && attempt <= CONFLICT_RETRIES => {}
            Err(err) => return Err(api_error(&err)),
        }
    }
}

fn json_patch(operations: serde_json::Value) -> Patch<()> {
    // The operations above are well-formed by construction.
    Patch::Json(serde_json::from_value(operations).expect("a well-formed JSON patch"))
}

fn secret(desired: &Desired) -> KubeSecret {
    KubeSecret {
        metadata: ObjectMeta {
            name: Some(desired.name.clone()),
            namespace: Some(desired.namespace.clone()),
            labels: Some(desired.labels.clone()),
            annotations: (!desired.annotations.is_empty()).then(|| desired.annotations.clone()),
            owner_references: Some(vec![desired.owner.clone()]),
            ..Default::default()
        },
        type_: Some(desired.type_.clone()),
        data: Some(desired.data.expose().clone()),
        ..Default::default()
    }
}
