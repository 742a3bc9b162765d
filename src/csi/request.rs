//! Kubelet's NodePublishVolume request, checked and turned into a typed [`PublishRequest`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use tonic::Status;

use crate::limits::{MAX_ATTRIBUTES, MAX_PARAMETER_BYTES};
use crate::pod::{
    CLASS_ATTRIBUTE, POD_NAME, POD_NAMESPACE, POD_UID, PodInfo, SERVICE_ACCOUNT, TOKENS_ATTRIBUTE,
};
use crate::proto::csi::v1 as pb;
use crate::publish::PublishRequest;
use crate::redact::Secret;
use crate::volume::target::KubeletRoot;

/// Checks a NodePublishVolume request in upstream's order, each failure an `INVALID_ARGUMENT`
/// naming the field and how to fix it. With `kubelet_root` (on a node) the target must be
/// kubelet's path for a CSI volume under it.
pub fn publish_request(
    request: pb::NodePublishVolumeRequest,
    timeout: Option<Duration>,
    kubelet_root: Option<&KubeletRoot>,
) -> Result<PublishRequest, Status> {
    let Some(capability) = request.volume_capability else {
        return Err(Status::invalid_argument(
            "Volume capability missing in request",
        ));
    };
    if request.volume_id.is_empty() {
        return Err(Status::invalid_argument("Volume ID missing in request"));
    }
    if request.target_path.is_empty() {
        return Err(Status::invalid_argument("Target path missing in request"));
    }
    if request.volume_context.is_empty() {
        return Err(Status::invalid_argument(
            "Volume attributes missing in request: set volumeAttributes.secretProviderClass on the pod's CSI volume",
        ));
    }
    if !request.readonly {
        return Err(Status::invalid_argument(
            "Readonly is not true in request: set readOnly: true on the pod's CSI volume",
        ));
    }
    if matches!(
        capability.access_type,
        Some(pb::volume_capability::AccessType::Block(_))
    ) {
        return Err(Status::invalid_argument(
            "block volume capability is not supported: secrets-store volumes are filesystem mounts",
        ));
    }
    let group = match &capability.access_type {
        Some(pb::volume_capability::AccessType::Mount(mount))
            if !mount.volume_mount_group.is_empty() =>
        {
            Some(mount.volume_mount_group.parse::<u32>().map_err(|_| {
                Status::invalid_argument(format!(
                    "volume_mount_group {:?} is not a numeric group id: set the pod's \
                     securityContext.fsGroup to a number",
                    mount.volume_mount_group
                ))
            })?)
        }
        _ => None,
    };
    let target_path = PathBuf::from(&request.target_path);
    if !target_path.is_absolute() {
        return Err(Status::invalid_argument(format!(
            "Target path {:?} is not absolute",
            request.target_path
        )));
    }
    check_target(&target_path, kubelet_root)?;
    let bytes: usize = request
        .volume_context
        .iter()
        .chain(&request.secrets)
        .map(|(k, v)| k.len() + v.len())
        .sum();
    if request.volume_context.len() > MAX_ATTRIBUTES || bytes > MAX_PARAMETER_BYTES {
        return Err(Status::invalid_argument(format!(
            "Volume attributes too large: {} attributes of {bytes} bytes (with the secrets); a \
             volume may have at most {MAX_ATTRIBUTES} of {MAX_PARAMETER_BYTES} bytes in all",
            request.volume_context.len()
        )));
    }

    let mut attributes: BTreeMap<String, String> = request.volume_context.into_iter().collect();
    let required = |attributes: &BTreeMap<String, String>, key: &str, fix: &str| {
        attributes
            .get(key)
            .filter(|value| !value.trim().is_empty())
            .cloned()
            .ok_or_else(|| {
                Status::invalid_argument(format!("volume attribute {key} is not set: {fix}"))
            })
    };
    let class_name = required(
        &attributes,
        CLASS_ATTRIBUTE,
        "name the SecretProviderClass in the pod's CSI volumeAttributes",
    )?;
    let pod_info_fix = "set podInfoOnMount: true on the CSIDriver secrets-store.csi.k8s.io";
    let pod = PodInfo {
        name: required(&attributes, POD_NAME, pod_info_fix)?,
        namespace: required(&attributes, POD_NAMESPACE, pod_info_fix)?,
        uid: required(&attributes, POD_UID, pod_info_fix)?,
        service_account: attributes.get(SERVICE_ACCOUNT).cloned().unwrap_or_default(),
    };

    // Kubernetes 1.35+ may send the tokens in the request secrets; they win, as upstream.
    let from_attributes = attributes.remove(TOKENS_ATTRIBUTE);
    let service_account_tokens = request
        .secrets
        .get(TOKENS_ATTRIBUTE)
        .cloned()
        .or(from_attributes)
        .filter(|tokens| !tokens.is_empty())
        .map(Secret::new);
    let secrets = (!request.secrets.is_empty()).then(|| {
        request
            .secrets
            .into_iter()
            .map(|(key, value)| (key, Secret::new(value)))
            .collect()
    });

    Ok(PublishRequest {
        volume_id: request.volume_id,
        target_path,
        class_name: class_name.trim().to_owned(),
        pod,
        attributes,
        service_account_tokens,
        secrets,
        timeout,
        group,
    })
}

/// On a node, the target must be one of kubelet's CSI volume paths (unpublish too).
pub fn check_target(target: &std::path::Path, root: Option<&KubeletRoot>) -> Result<(), Status> {
    match root {
        Some(root) => root
            .owner(target)
            .map(drop)
            .map_err(|err| Status::invalid_argument(err.to_string())),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> pb::NodePublishVolumeRequest {
        pb::NodePublishVolumeRequest {
            volume_id: "csi-123".into(),
            target_path: "/var/lib/kubelet/pods/uid/volumes/kubernetes.io~csi/v/mount".into(),
            volume_capability: Some(pb::VolumeCapability {
                access_type: Some(pb::volume_capability::AccessType::Mount(Default::default())),
                access_mode: None,
            }),
            readonly: true,
            volume_context: [
                (CLASS_ATTRIBUTE, "spc"),
                (POD_NAME, "pod"),
                (POD_NAMESPACE, "ns"),
                (POD_UID, "uid"),
                (SERVICE_ACCOUNT, "sa"),
                (
                    TOKENS_ATTRIBUTE,
                    "{\"aud\":{\"token\":\"from-attributes\"}}",
                ),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
            ..Default::default()
        }
    }

    fn message(request: pb::NodePublishVolumeRequest) -> (tonic::Code, String) {
        let status = publish_request(request, None, None).unwrap_err();
        (status.code(), status.message().to_owned())
    }

    #[test]
    fn a_valid_request_becomes_typed() {
        let typed = publish_request(valid(), None, None).unwrap();
        assert_eq!(typed.class_name, "spc");
        assert_eq!(
            typed.pod,
            PodInfo {
                name: "pod".into(),
                namespace: "ns".into(),
                uid: "uid".into(),
                service_account: "sa".into()
            }
        );
        assert!(
            !typed.attributes.contains_key(TOKENS_ATTRIBUTE),
            "tokens travel redacted, not as attributes"
        );
        assert_eq!(
            typed.service_account_tokens.unwrap().expose(),
            "{\"aud\":{\"token\":\"from-attributes\"}}"
        );
        assert!(typed.secrets.is_none());
    }

    #[test]
    fn tokens_in_secrets_win() {
        let mut request = valid();
        request
            .secrets
            .insert(TOKENS_ATTRIBUTE.into(), "from-secrets".into());
        let typed = publish_request(request, None, None).unwrap();
        assert_eq!(
            typed.service_account_tokens.unwrap().expose(),
            "from-secrets"
        );
        assert_eq!(
            typed.secrets.unwrap()[TOKENS_ATTRIBUTE].expose(),
            "from-secrets"
        );
    }

    #[test]
    fn bad_requests_name_the_field() {
        use tonic::Code::InvalidArgument;
        let mut r = valid();
        r.volume_capability = None;
        r.volume_id.clear();
        assert_eq!(
            message(r),
            (
                InvalidArgument,
                "Volume capability missing in request".into()
            )
        );
        let mut r = valid();
        r.volume_id.clear();
        assert_eq!(message(r).1, "Volume ID missing in request");
        let mut r = valid();
        r.target_path.clear();
        assert_eq!(message(r).1, "Target path missing in request");
        let mut r = valid();
        r.volume_context.clear();
        assert!(
            message(r)
                .1
                .starts_with("Volume attributes missing in request")
        );
        let mut r = valid();
        r.readonly = false;
        assert!(message(r).1.starts_with("Readonly is not true in request"));
        let mut r = valid();
        r.volume_capability.as_mut().unwrap().access_type =
            Some(pb::volume_capability::AccessType::Block(Default::default()));
        assert!(message(r).1.contains("block"));
        let mut r = valid();
        r.target_path = "relative/mount".into();
        assert!(message(r).1.contains("not absolute"));
        for key in [CLASS_ATTRIBUTE, POD_NAME, POD_NAMESPACE, POD_UID] {
            let mut r = valid();
            r.volume_context.remove(key);
            let (code, text) = message(r);
            assert_eq!(code, InvalidArgument);
            assert!(text.contains(key), "{text}");
        }
    }

    #[test]
    fn oversized_attributes_and_foreign_targets_are_refused() {
        let mut r = valid();
        r.volume_context
            .insert("huge".into(), "x".repeat(MAX_PARAMETER_BYTES));
        assert!(message(r).1.starts_with("Volume attributes too large"));
        let mut r = valid();
        for i in 0..MAX_ATTRIBUTES {
            r.volume_context.insert(format!("k{i}"), String::new());
        }
        assert!(message(r).1.starts_with("Volume attributes too large"));
        let dir = tempfile::tempdir().unwrap();
        let root = KubeletRoot::new(dir.path()).unwrap();
        let mut r = valid();
        r.target_path = dir
            .path()
            .join("pods/u/volumes/kubernetes.io~csi/v/mount")
            .display()
            .to_string();
        assert!(publish_request(r.clone(), None, Some(&root)).is_ok());
        r.target_path = "/etc/ssl".into();
        let status = publish_request(r, None, Some(&root)).unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().contains("--kubelet-root-dir"),
            "{}",
            status.message()
        );
    }
}
