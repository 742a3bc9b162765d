//! The one place pipeline errors become gRPC statuses. Exhaustive: a new error variant does not
//! compile until its code is chosen.

use tonic::{Code, Status};

use crate::class::ClassError;
use crate::error::{KubeError, full_message};
use crate::pod_status::PodStatusError;
use crate::publish::PublishError;
use crate::volume::UnpublishError;
use crate::volume::{MountError, PayloadError};

impl From<&PublishError> for Code {
    fn from(error: &PublishError) -> Self {
        match error {
            PublishError::Class(ClassError::NotFound { .. }) => Code::NotFound,
            PublishError::Class(ClassError::Api { source, .. }) => kube_code(source),
            PublishError::Class(
                ClassError::MissingProvider { .. }
                | ClassError::MissingParameters { .. }
                | ClassError::RotationInterval { .. },
            ) => Code::FailedPrecondition,
            PublishError::Class(ClassError::TooLarge { .. } | ClassError::PodOverride { .. }) => {
                Code::InvalidArgument
            }
            PublishError::Provider { source, .. } => source.grpc_code(),
            PublishError::Template { source, .. } if source.is_declaration() => {
                Code::InvalidArgument
            }
            PublishError::Template { .. } => Code::FailedPrecondition,
            PublishError::Busy { .. } => Code::ResourceExhausted,
            PublishError::Payload {
                source: PayloadError::TooLarge { .. } | PayloadError::TooManyFiles { .. },
                ..
            } => Code::ResourceExhausted,
            PublishError::Payload { .. } => Code::Internal,
            PublishError::Target(_) => Code::InvalidArgument,
            PublishError::TargetPath { .. } | PublishError::Write { .. } => Code::Internal,
            PublishError::Mount(
                MountError::Mount { .. } | MountError::Unmount { .. } | MountError::Inspect { .. },
            ) => Code::Internal,
            PublishError::PodStatus(PodStatusError::NameTooLong { .. }) => Code::FailedPrecondition,
            PublishError::PodStatus(PodStatusError::Api { source, .. }) => kube_code(source),
        }
    }
}

impl From<PublishError> for Status {
    fn from(error: PublishError) -> Self {
        Status::new(Code::from(&error), full_message(&error))
    }
}

impl From<UnpublishError> for Status {
    fn from(error: UnpublishError) -> Self {
        let code = match &error {
            UnpublishError::Target(_) => Code::InvalidArgument,
            UnpublishError::NotEmpty { .. } => Code::FailedPrecondition,
            UnpublishError::Unmount { .. }
            | UnpublishError::NestedMount { .. }
            | UnpublishError::Remove { .. } => Code::Internal,
        };
        Status::new(code, full_message(&error))
    }
}

/// Retryable API failures stay retryable; refusals say so.
fn kube_code(error: &KubeError) -> Code {
    match error.status_code() {
        Some(403) => Code::PermissionDenied,
        Some(404) => Code::NotFound,
        Some(409) => Code::Aborted,
        _ => Code::Unavailable,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::provider::ProviderError;
    use crate::volume::target::TargetError;

    fn kube(code: u16) -> KubeError {
        KubeError(kube::Error::Api(
            kube::core::Status::failure("secretproviderclasses is forbidden", "Forbidden")
                .with_code(code)
                .boxed(),
        ))
    }

    fn class_api(code: u16) -> PublishError {
        PublishError::Class(ClassError::Api {
            namespace: "team".into(),
            name: "db".into(),
            source: kube(code),
        })
    }

    fn provider(source: ProviderError) -> PublishError {
        PublishError::Provider {
            pod: "team/web".into(),
            source,
        }
    }

    #[test]
    fn each_failure_gets_the_code_kubelet_and_users_act_on() {
        let cases = [
            (
                PublishError::Class(ClassError::NotFound {
                    namespace: "team".into(),
                    name: "db".into(),
                }),
                Code::NotFound,
            ),
            (class_api(403), Code::PermissionDenied),
            (class_api(404), Code::NotFound),
            (class_api(409), Code::Aborted),
            (class_api(500), Code::Unavailable),
            (
                PublishError::Class(ClassError::MissingProvider {
                    namespace: "team".into(),
                    name: "db".into(),
                }),
                Code::FailedPrecondition,
            ),
            (
                PublishError::Class(ClassError::PodOverride {
                    namespace: "team".into(),
                    name: "db".into(),
                    attribute: "vaultAddress".into(),
                    provider: "vault".into(),
                }),
                Code::InvalidArgument,
            ),
            (
                provider(ProviderError::Rpc {
                    provider: "p".into(),
                    code: Code::Unauthenticated,
                    message: "no".into(),
                }),
                Code::Unauthenticated,
            ),
            (
                provider(ProviderError::DeadlineExceeded {
                    provider: "p".into(),
                    timeout: Duration::from_secs(1),
                }),
                Code::DeadlineExceeded,
            ),
            (
                PublishError::Busy {
                    pod: "team/web".into(),
                    waited: Duration::from_secs(1),
                    share: 2,
                },
                Code::ResourceExhausted,
            ),
            (
                PublishError::Payload {
                    pod: "team/web".into(),
                    source: PayloadError::TooLarge { limit: 1 },
                },
                Code::ResourceExhausted,
            ),
            (
                PublishError::Payload {
                    pod: "team/web".into(),
                    source: PayloadError::Conflict {
                        file: "a".into(),
                        other: "a/b".into(),
                    },
                },
                Code::Internal,
            ),
            (
                PublishError::Target(TargetError::Shape {
                    path: "/tmp/x".into(),
                    root: "/var/lib/kubelet".into(),
                }),
                Code::InvalidArgument,
            ),
            (
                PublishError::PodStatus(PodStatusError::NameTooLong {
                    name: "x".repeat(300),
                    len: 300,
                }),
                Code::FailedPrecondition,
            ),
            (
                PublishError::PodStatus(PodStatusError::Api {
                    namespace: "team".into(),
                    pod: "web".into(),
                    source: kube(503),
                }),
                Code::Unavailable,
            ),
        ];
        for (error, code) in cases {
            let status = Status::from(error);
            assert_eq!(status.code(), code, "{}", status.message());
            assert!(
                !status.message().contains("Status {"),
                "no client dumps in kubelet's message: {}",
                status.message()
            );
        }
    }
}
