//! How errors read where users see them: kubelet's pod events, Events and logs.

/// The error and its sources, deduplicated: kubelet shows only this string in the pod's events.
pub fn full_message(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message = format!("{message}: {text}");
        }
        source = cause.source();
    }
    message
}

/// A Kubernetes API error as users read it: the server's own sentence (`secrets "db" is
/// forbidden: …`), not the client's dump of the whole `Status` object. Transport failures
/// keep their cause chain.
#[derive(Debug)]
pub struct KubeError(pub kube::Error);

impl KubeError {
    /// The HTTP status the API server answered with, if it answered.
    pub fn status_code(&self) -> Option<u16> {
        match &self.0 {
            kube::Error::Api(status) => Some(status.code),
            _ => None,
        }
    }
}

impl From<kube::Error> for KubeError {
    fn from(error: kube::Error) -> Self {
        Self(error)
    }
}

impl std::fmt::Display for KubeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&kube_message(&self.0))
    }
}

impl std::error::Error for KubeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.0 {
            // The server's message is all of it; the Status would only repeat it.
            kube::Error::Api(_) => None,
            other => other.source(),
        }
    }
}

/// The API server's own message for an API error, else the client error.
pub fn kube_message(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) if !status.message.is_empty() => status.message.clone(),
        kube::Error::Api(status) => format!("the API server answered {}", status.code),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16, message: &str) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure(message, "Forbidden")
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn api_errors_read_as_the_server_wrote_them() {
        let error = KubeError(api(403, "secrets \"db\" is forbidden: no"));
        assert_eq!(error.to_string(), "secrets \"db\" is forbidden: no");
        assert_eq!(full_message(&error), "secrets \"db\" is forbidden: no");
        assert_eq!(error.status_code(), Some(403));
        assert_eq!(
            KubeError(api(500, "")).to_string(),
            "the API server answered 500"
        );
    }
}
