//! Who a volume is for: the pod identity kubelet sends with `podInfoOnMount`, and the names of
//! every volume attribute the driver itself reads. Kept apart from the gRPC edge so providers,
//! the pipeline and the status record share one typed identity instead of re-parsing strings.

use std::collections::BTreeMap;

/// Volume attribute naming the SecretProviderClass.
pub const CLASS_ATTRIBUTE: &str = "secretProviderClass";
/// Pod name attribute (kubelet, `podInfoOnMount`).
pub const POD_NAME: &str = "csi.storage.k8s.io/pod.name";
/// Pod namespace attribute.
pub const POD_NAMESPACE: &str = "csi.storage.k8s.io/pod.namespace";
/// Pod UID attribute.
pub const POD_UID: &str = "csi.storage.k8s.io/pod.uid";
/// Service account name attribute.
pub const SERVICE_ACCOUNT: &str = "csi.storage.k8s.io/serviceAccount.name";
/// Attribute under which kubelet passes the pod's service-account tokens (JSON).
pub const TOKENS_ATTRIBUTE: &str = "csi.storage.k8s.io/serviceAccount.tokens";

/// The pod a volume belongs to, from kubelet's `podInfoOnMount` attributes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct PodInfo {
    /// Pod name.
    pub name: String,
    /// Pod namespace: SecretProviderClasses are looked up here only.
    pub namespace: String,
    /// Pod UID, the SPCPS owner.
    pub uid: String,
    /// The pod's service account.
    pub service_account: String,
}

impl PodInfo {
    /// Removes the identity attributes from `attributes` and returns them as a pod, missing ones
    /// empty: a provider plugin request (whose driver already checked them) carries the pod
    /// this way, and nothing downstream reads the strings again.
    pub fn take_from(attributes: &mut BTreeMap<String, String>) -> Self {
        let mut take = |key: &str| attributes.remove(key).unwrap_or_default();
        Self {
            name: take(POD_NAME),
            namespace: take(POD_NAMESPACE),
            uid: take(POD_UID),
            service_account: take(SERVICE_ACCOUNT),
        }
    }

    /// Writes the identity into `attributes` as kubelet names it, over anything there (the
    /// provider plugin protocol carries the pod as attributes); an empty field stays absent,
    /// as kubelet sends it.
    pub fn put_into(&self, attributes: &mut BTreeMap<String, String>) {
        for (key, value) in [
            (POD_NAME, &self.name),
            (POD_NAMESPACE, &self.namespace),
            (POD_UID, &self.uid),
            (SERVICE_ACCOUNT, &self.service_account),
        ] {
            if value.is_empty() {
                attributes.remove(key);
            } else {
                attributes.insert(key.to_owned(), value.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_identity_round_trips_through_attributes_and_wins_over_them() {
        let pod = PodInfo {
            name: "web".into(),
            namespace: "team".into(),
            uid: "1234".into(),
            service_account: "app".into(),
        };
        let mut attributes: BTreeMap<String, String> = [
            (POD_NAMESPACE.to_owned(), "someone-else".to_owned()),
            ("objects".to_owned(), "[]".to_owned()),
        ]
        .into();
        pod.put_into(&mut attributes);
        assert_eq!(attributes[POD_NAMESPACE], "team");
        assert_eq!(PodInfo::take_from(&mut attributes), pod);
        assert_eq!(attributes.keys().collect::<Vec<_>>(), ["objects"]);
    }
}
