//! The publish pipeline in process, without root, a cluster or a backend: an in-memory class,
//! a scripted provider and plain directories. Covers the rotation gate, a failed rotation
//! keeping the old files, and the undo after a status record cannot be written.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use secrets_store_csi_driver::class::{Class, StaticClasses};
use secrets_store_csi_driver::crd::SecretProviderClassSpec;
use secrets_store_csi_driver::metrics::Metrics;
use secrets_store_csi_driver::pod::PodInfo;
use secrets_store_csi_driver::pod_status::PodStatusWriter;
use secrets_store_csi_driver::provider::{
    MountRequest, MountResponse, ObjectVersion, Provider, ProviderError, ProviderFile, Registry,
    RegistryConfig,
};
use secrets_store_csi_driver::publish::{self, Context, Mode, Outcome, PublishRequest};
use secrets_store_csi_driver::redact::Secret;

/// Answers each mount with the next scripted value (`Err` for a backend failure) and counts
/// the calls.
#[derive(Debug, Default)]
struct Scripted {
    answers: Mutex<VecDeque<Result<&'static str, &'static str>>>,
    calls: Mutex<Vec<MountRequest>>,
}

impl Scripted {
    fn new(answers: &[Result<&'static str, &'static str>]) -> Arc<Self> {
        Arc::new(Self {
            answers: Mutex::new(answers.iter().copied().collect()),
            calls: Mutex::default(),
        })
    }

    fn calls(&self) -> usize {
        self.calls.lock().unwrap().len()
    }
}

#[async_trait]
impl Provider for Scripted {
    async fn mount(&self, request: MountRequest) -> Result<MountResponse, ProviderError> {
        self.calls.lock().unwrap().push(request);
        let answer = self
            .answers
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Ok("last"));
        match answer {
            Ok(value) => Ok(MountResponse {
                versions: vec![ObjectVersion {
                    id: "token".into(),
                    version: value.into(),
                }],
                files: vec![ProviderFile {
                    path: "token".into(),
                    mode: 0o600,
                    contents: Secret::new(value.as_bytes().to_vec()),
                }],
            }),
            // The backend's own error travels as the source, and reaches kubelet's message.
            Err(message) => Err(ProviderError::BackendUnavailable {
                provider: "scripted".into(),
                message: "the backend is unreachable".into(),
                source: Some(Arc::new(std::io::Error::other(message))),
            }),
        }
    }
}

fn context(provider: Arc<Scripted>) -> Context {
    let mut classes = StaticClasses::default();
    classes.insert(
        "team",
        "app",
        Class {
            spec: SecretProviderClassSpec {
                provider: "scripted".into(),
                parameters: [("objects".to_owned(), "token".to_owned())].into(),
                ..Default::default()
            },
            annotations: BTreeMap::new(),
            ..Default::default()
        },
    );
    let providers = Registry::new(RegistryConfig {
        socket_dirs: Vec::new(),
        max_recv_msg_size: 1 << 20,
    })
    .with_builtin("scripted", provider);
    Context::new(
        Arc::new(classes),
        Arc::new(providers),
        Arc::new(Metrics::new()),
    )
}

fn request(target: &Path) -> PublishRequest {
    PublishRequest {
        volume_id: "csi-1".into(),
        target_path: target.to_owned(),
        class_name: "app".into(),
        pod: PodInfo {
            name: "web".into(),
            namespace: "team".into(),
            uid: "1234".into(),
            service_account: "app".into(),
        },
        ..Default::default()
    }
}

fn token(target: &Path) -> String {
    std::fs::read_to_string(target.join("token")).unwrap()
}

#[tokio::test]
async fn a_republished_volume_is_fetched_again_only_when_rotation_is_due() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("volume");
    let provider = Scripted::new(&[Ok("one"), Ok("two")]);

    let off = context(provider.clone());
    publish::publish(&off, &request(&target), Mode::Publish)
        .await
        .unwrap();
    assert_eq!(token(&target), "one");
    let again = publish::publish(&off, &request(&target), Mode::Publish)
        .await
        .unwrap();
    assert_eq!(again.outcome, Outcome::AlreadyMounted);
    assert_eq!(
        provider.calls(),
        1,
        "rotation off: kubelet's republish is a no-op"
    );

    let hourly = context(provider.clone()).with_rotation(Some(Duration::from_secs(3600)));
    let early = publish::publish(&hourly, &request(&target), Mode::Publish)
        .await
        .unwrap();
    assert_eq!(
        early.outcome,
        Outcome::AlreadyMounted,
        "the last swap is recent, so nothing is due yet"
    );
    assert_eq!(provider.calls(), 1);

    let always = context(provider.clone()).with_rotation(Some(Duration::ZERO));
    let rotated = publish::publish(&always, &request(&target), Mode::Publish)
        .await
        .unwrap();
    assert_eq!(
        rotated.outcome,
        Outcome::Fetched {
            changed: true,
            remount: true
        }
    );
    assert_eq!(token(&target), "two");
    let calls = provider.calls.lock().unwrap();
    assert!(
        calls[1].current_versions.is_empty(),
        "a new process knows no versions yet"
    );
    assert_eq!(calls[1].pod.namespace, "team");
    assert!(
        !calls[1]
            .parameters
            .contains_key("csi.storage.k8s.io/pod.namespace"),
        "the identity travels typed only"
    );
}

#[tokio::test]
async fn a_failed_rotation_keeps_the_old_files_and_answers_ok() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("volume");
    let provider = Scripted::new(&[Ok("one"), Err("vault is sealed"), Ok("three")]);
    let ctx = context(provider.clone()).with_rotation(Some(Duration::ZERO));
    publish::publish(&ctx, &request(&target), Mode::Publish)
        .await
        .unwrap();

    let failed = publish::publish(&ctx, &request(&target), Mode::Publish)
        .await
        .unwrap();
    let Outcome::RotationFailed { message } = &failed.outcome else {
        panic!("expected a failed rotation, got {:?}", failed.outcome);
    };
    assert!(
        message.contains("the backend is unreachable: vault is sealed"),
        "{message}"
    );
    assert_eq!(token(&target), "one", "the mounted contents stay");
    assert_eq!(failed.versions[0].version, "one");
    assert_eq!(
        provider.calls.lock().unwrap()[1].current_versions,
        vec![ObjectVersion {
            id: "token".into(),
            version: "one".into()
        }],
        "the provider is told what is mounted"
    );

    publish::publish(&ctx, &request(&target), Mode::Publish)
        .await
        .unwrap();
    assert_eq!(token(&target), "three", "the next rotation recovers");
}

#[tokio::test]
async fn a_first_mount_whose_status_record_fails_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("volume");
    // Nothing listens on port 1: the record cannot be written.
    let config = kube::Config::new("http://127.0.0.1:1".parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    let provider = Scripted::new(&[Ok("one")]);
    let ctx = context(provider.clone()).with_pod_status(PodStatusWriter::new(client, "node-a"));

    let error = publish::publish(&ctx, &request(&target), Mode::Publish)
        .await
        .unwrap_err();
    let status = tonic::Status::from(error);
    assert_eq!(
        status.code(),
        tonic::Code::Unavailable,
        "{}",
        status.message()
    );
    assert!(
        status
            .message()
            .contains("failed to create secret provider class pod status for pod team/web"),
        "{}",
        status.message()
    );
    assert_eq!(provider.calls(), 1);
    assert!(
        !target.exists(),
        "the target this call created is removed with what was written in it"
    );
}
