//! The one place pipeline errors become gRPC statuses. Exhaustive: a new error variant does not
//! compile until its code is chosen.

use tonic::{Code, Status};

use crate::class::ClassError;
use crate::error::{KubeError, full_message};
use crate::pod_status::PodStatusError;
use crate::publish::{PublishError, UnpublishError};
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
