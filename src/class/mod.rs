//! Which SecretProviderClass a volume uses and what its provider is told.

pub mod refresh;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use kube::Api;

use crate::crd::{SecretProviderClass, SecretProviderClassSpec, v1alpha1};
use crate::error::KubeError;
use crate::limits::{MAX_PARAMETER_BYTES, MAX_PARAMETERS};

/// Annotation on a SecretProviderClass that sets its own rotation interval (a duration such
/// as `30s` or `1h`), overriding `--rotation-poll-interval` for its volumes.
pub const ROTATION_INTERVAL_ANNOTATION: &str = "secrets-store.csi.k8s.io/rotation-poll-interval";

/// A SecretProviderClass as the pipeline uses it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Class {
    /// The spec.
    pub spec: SecretProviderClassSpec,
    /// The metadata annotations (the per-class rotation interval lives there).
    pub annotations: BTreeMap<String, String>,
    /// `<uid>/<generation>`: changes when the class is recreated or its spec edited.
    pub revision: String,
}

fn revision(metadata: &kube::api::ObjectMeta) -> String {
    format!(
        "{}/{}",
        metadata.uid.as_deref().unwrap_or_default(),
        metadata.generation.unwrap_or_default()
    )
}

impl Class {
    /// The class's own rotation interval, if it sets one.
    pub fn rotation_interval(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Duration>, ClassError> {
        let Some(value) = self.annotations.get(ROTATION_INTERVAL_ANNOTATION) else {
            return Ok(None);
        };
        humantime::parse_duration(value.trim())
            .ok()
            .filter(|d| !d.is_zero())
            .map(Some)
            .ok_or_else(|| ClassError::RotationInterval {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                value: value.clone(),
            })
    }
}

/// Where SecretProviderClasses are looked up: the API server on a node, a file for `mount`.
#[async_trait]
pub trait ClassSource: Send + Sync + fmt::Debug {
    /// The class `name` in `namespace` (the pod's namespace, never another).
    async fn get(&self, namespace: &str, name: &str) -> Result<Class, ClassError>;
}

/// A SecretProviderClass that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ClassError {
    /// No such class in the pod's namespace (message kept as upstream: tooling greps it).
    #[error(
        "failed to get secretproviderclass {namespace}/{name}, error: secretproviderclass {name:?} not found; \
         create it in namespace {namespace:?}, the pod's namespace"
    )]
    NotFound {
        /// The pod's namespace.
        namespace: String,
        /// The class name from `volumeAttributes.secretProviderClass`.
        name: String,
    },
    /// The API server could not be asked.
    #[error("failed to get secretproviderclass {namespace}/{name}, error: {source}")]
    Api {
        /// The pod's namespace.
        namespace: String,
        /// The class name.
        name: String,
        /// The client error.
        #[source]
        source: KubeError,
    },
    /// `spec.provider` is empty.
    #[error("provider not set in {namespace}/{name}: set spec.provider in the SecretProviderClass")]
    MissingProvider {
        /// The namespace.
        namespace: String,
        /// The class name.
        name: String,
    },
    /// The rotation interval annotation is not a positive duration.
    #[error(
        "invalid annotation {ROTATION_INTERVAL_ANNOTATION}={value:?} on SecretProviderClass {namespace}/{name}: \
         use a positive duration such as 30s, 5m or 1h"
    )]
    RotationInterval {
        /// The namespace.
        namespace: String,
        /// The class name.
        name: String,
        /// The annotation's value.
        value: String,
    },
    /// `spec.parameters` is larger than a volume's parameters may be.
    #[error(
        "parameters of {namespace}/{name} are too large: {count} entries of {bytes} bytes; a class \
         may have at most {MAX_PARAMETERS} parameters of {MAX_PARAMETER_BYTES} bytes in all"
    )]
    TooLarge {
        /// The namespace.
        namespace: String,
        /// The class name.
        name: String,
        /// Number of parameters.
        count: usize,
        /// Their keys' and values' bytes.
        bytes: usize,
    },
    /// A pod's volume attribute names a parameter that only the class may set.
    #[error(
        "volume attribute {attribute:?} cannot override SecretProviderClass {namespace}/{name}: \
         it configures what runs inside the privileged driver (provider {provider}, or the \
         driver's templates), so only the class may set it; move it into the class's \
         spec.parameters"
    )]
    PodOverride {
        /// The namespace.
        namespace: String,
        /// The class name.
        name: String,
        /// The attribute.
        attribute: String,
        /// The provider.
        provider: String,
    },
    /// `spec.parameters` is empty.
    #[error(
        "parameters not set in {namespace}/{name}: set spec.parameters in the SecretProviderClass"
    )]
    MissingParameters {
        /// The namespace.
        namespace: String,
        /// The class name.
        name: String,
    },
}

/// Looks classes up through the Kubernetes API, `v1` first, then the deprecated `v1alpha1` on
/// clusters whose CRD serves only that.
#[derive(Clone)]
pub struct KubeClasses {
    client: kube::Client,
}

impl fmt::Debug for KubeClasses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubeClasses").finish_non_exhaustive()
    }
}

impl KubeClasses {
    /// Classes from the cluster `client` talks to.
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }
}

#[async_trait]
impl ClassSource for KubeClasses {
    async fn get(&self, namespace: &str, name: &str) -> Result<Class, ClassError> {
        let api_error = |source: kube::Error| ClassError::Api {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            source: source.into(),
        };
        let not_found = || ClassError::NotFound {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        let v1: Api<SecretProviderClass> = Api::namespaced(self.client.clone(), namespace);
        match v1.get_opt(name).await {
            Ok(Some(class)) => {
                return Ok(Class {
                    revision: revision(&class.metadata),
                    spec: class.spec,
                    annotations: class.metadata.annotations.unwrap_or_default(),
                });
            }
            Ok(None) => {}
            // A 404 without a Status body means the version itself is not served.
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(err) => return Err(api_error(err)),
        }
        let legacy: Api<v1alpha1::SecretProviderClass> =
            Api::namespaced(self.client.clone(), namespace);
        match legacy.get_opt(name).await {
            Ok(Some(class)) => {
                tracing::warn!(
                    spc = name,
                    namespace,
                    "SecretProviderClass read as secrets-store.csi.x-k8s.io/v1alpha1, which is deprecated: \
                     upgrade the CRDs so that v1 is served"
                );
                Ok(Class {
                    revision: revision(&class.metadata),
                    spec: class.spec.into(),
                    annotations: class.metadata.annotations.unwrap_or_default(),
                })
            }
            // Not found, or v1alpha1 not served; a refusal or a failure says what it was.
            Ok(None) => Err(not_found()),
            Err(kube::Error::Api(status)) if status.code == 404 => Err(not_found()),
            Err(err) => Err(api_error(err)),
        }
    }
}

/// Classes given up front, for `mount` (no cluster).
#[derive(Debug, Default)]
pub struct StaticClasses {
    classes: BTreeMap<(String, String), Class>,
}

impl StaticClasses {
    /// Adds a class under its namespace and name.
    pub fn insert(&mut self, namespace: &str, name: &str, class: Class) {
        self.classes
            .insert((namespace.to_owned(), name.to_owned()), class);
    }
}

#[async_trait]
impl ClassSource for StaticClasses {
    async fn get(&self, namespace: &str, name: &str) -> Result<Class, ClassError> {
        self.classes
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
            .ok_or_else(|| ClassError::NotFound {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            })
    }
}

/// Checks what upstream requires of a class before it is used.
pub fn check(
    namespace: &str,
    name: &str,
    spec: &SecretProviderClassSpec,
) -> Result<(), ClassError> {
    if spec.provider.trim().is_empty() {
        return Err(ClassError::MissingProvider {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        });
    }
    if spec.parameters.is_empty() {
        return Err(ClassError::MissingParameters {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        });
    }
    let bytes = map_bytes(&spec.parameters);
    if spec.parameters.len() > MAX_PARAMETERS || bytes > MAX_PARAMETER_BYTES {
        return Err(ClassError::TooLarge {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            count: spec.parameters.len(),
            bytes,
        });
    }
    Ok(())
}

/// Bytes of a string map's keys and values.
pub fn map_bytes(map: &BTreeMap<String, String>) -> usize {
    map.iter().map(|(k, v)| k.len() + v.len()).sum()
}

/// The provider's parameters: the class's, overridden by the pod's volume attributes, as
/// upstream merges them, except that an attribute naming one of `class_only` (what a
/// built-in provider reads, since it runs inside the privileged driver) is refused.
pub fn merge_parameters(
    namespace: &str,
    name: &str,
    spec: &SecretProviderClassSpec,
    volume_attributes: &BTreeMap<String, String>,
    class_only: &[&str],
) -> Result<BTreeMap<String, String>, ClassError> {
    if let Some(attribute) = volume_attributes
        .keys()
        .find(|key| class_only.contains(&key.as_str()))
    {
        return Err(ClassError::PodOverride {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            attribute: attribute.clone(),
            provider: spec.provider.trim().to_owned(),
        });
    }
    let mut merged = spec.parameters.clone();
    merged.extend(
        volume_attributes
            .iter()
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_attributes_override_class_parameters() {
        let spec = SecretProviderClassSpec {
            provider: "p".into(),
            parameters: [("a", "class"), ("b", "class")]
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .into(),
            ..Default::default()
        };
        let attributes = [("b", "pod"), ("c", "pod")]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .into();
        let merged = merge_parameters("ns", "c", &spec, &attributes, &[]).unwrap();
        assert_eq!(merged["a"], "class");
        assert_eq!(merged["b"], "pod");
        assert_eq!(merged["c"], "pod");
        let refused = merge_parameters("ns", "c", &spec, &attributes, &["a", "c"]).unwrap_err();
        assert!(
            refused
                .to_string()
                .contains("volume attribute \"c\" cannot override"),
            "{refused}"
        );
    }

    #[test]
    fn a_class_has_bounded_parameters() {
        let mut spec = SecretProviderClassSpec {
            provider: "p".into(),
            ..Default::default()
        };
        spec.parameters
            .insert("objects".into(), "x".repeat(MAX_PARAMETER_BYTES));
        assert!(matches!(
            check("ns", "c", &spec),
            Err(ClassError::TooLarge { .. })
        ));
        spec.parameters = (0..=MAX_PARAMETERS)
            .map(|i| (i.to_string(), String::new()))
            .collect();
        assert!(matches!(
            check("ns", "c", &spec),
            Err(ClassError::TooLarge { .. })
        ));
    }

    #[test]
    fn a_class_may_set_its_own_rotation_interval() {
        let mut class = Class::default();
        assert_eq!(class.rotation_interval("ns", "c").unwrap(), None);
        class
            .annotations
            .insert(ROTATION_INTERVAL_ANNOTATION.into(), "90s".into());
        assert_eq!(
            class.rotation_interval("ns", "c").unwrap(),
            Some(Duration::from_secs(90))
        );
        for bad in ["0s", "soon", ""] {
            class
                .annotations
                .insert(ROTATION_INTERVAL_ANNOTATION.into(), bad.into());
            let error = class.rotation_interval("ns", "c").unwrap_err().to_string();
            assert!(error.contains("ns/c") && error.contains("30s"), "{error}");
        }
    }

    #[test]
    fn a_class_needs_a_provider_and_parameters() {
        let mut spec = SecretProviderClassSpec::default();
        assert_eq!(
            check("ns", "c", &spec).unwrap_err().to_string(),
            "provider not set in ns/c: set spec.provider in the SecretProviderClass"
        );
        spec.provider = "p".into();
        assert!(
            check("ns", "c", &spec)
                .unwrap_err()
                .to_string()
                .starts_with("parameters not set in ns/c")
        );
        spec.parameters.insert("k".into(), "v".into());
        assert!(check("ns", "c", &spec).is_ok());
    }
}
