//! The AWS calls: Secrets Manager `BatchGetSecretValue` (20 secrets a call) and
//! `GetSecretValue`, SSM `GetParameters` (10 names a call), and how their failures are
//! classified: a client error (4xx) is final, a server error or timeout may fail over.
//!
//! Every client shares one HTTP connection pool; the SDK's standard retry mode backs off on
//! throttling (`ThrottlingException`) and server errors before a call is reported failed.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_sdk_secretsmanager::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_http_client::tls;
use aws_smithy_runtime_api::client::http::SharedHttpClient;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;
use aws_types::SdkConfig;
use aws_types::region::Region;

use super::config::{Kind, Read};
use crate::redact::Secret;

/// Secrets per `BatchGetSecretValue` call (the API's limit).
pub const SECRET_BATCH: usize = 20;
/// Names per `GetParameters` call (the API's limit).
pub const PARAMETER_BATCH: usize = 10;

/// How every AWS client is built: one connection pool, the endpoint override, FIPS, retries
/// and time limits.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// The shared HTTP client (rustls with ring).
    pub http: SharedHttpClient,
    /// One URL for every AWS call (a test server or a VPC endpoint); `None` uses AWS's.
    pub endpoint_url: Option<String>,
    /// Use FIPS endpoints.
    pub use_fips: bool,
    /// Time limit of one attempt of one call.
    pub attempt_timeout: Duration,
    /// Attempts per call, including the first (throttling and server errors are retried).
    pub max_attempts: u32,
}

impl Endpoints {
    /// Clients for AWS (or `endpoint_url`); one attempt of a call may take `attempt_timeout`.
    pub fn new(endpoint_url: Option<String>, use_fips: bool, attempt_timeout: Duration) -> Self {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        Self {
            http,
            endpoint_url: endpoint_url.filter(|u| !u.is_empty()),
            use_fips,
            attempt_timeout,
            max_attempts: 3,
        }
    }

    fn retry(&self) -> RetryConfig {
        RetryConfig::standard().with_max_attempts(self.max_attempts)
    }

    fn timeouts(&self) -> TimeoutConfig {
        TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(3))
            .operation_attempt_timeout(self.attempt_timeout)
            .build()
    }

    /// The configuration every client of `region` shares.
    fn sdk_config(
        &self,
        region: &str,
        credentials: Option<SharedCredentialsProvider>,
    ) -> SdkConfig {
        let mut builder = SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(region.to_owned()))
            .http_client(self.http.clone())
            .use_fips(self.use_fips)
            .retry_config(self.retry())
            .timeout_config(self.timeouts());
        builder.set_endpoint_url(self.endpoint_url.clone());
        builder.set_credentials_provider(credentials);
        builder.build()
    }

    /// An STS client without credentials: `AssumeRoleWithWebIdentity` is unsigned.
    pub fn sts(&self, region: &str) -> aws_sdk_sts::Client {
        aws_sdk_sts::Client::new(&self.sdk_config(region, None))
    }

    /// Both services' clients for one region and identity.
    pub fn clients(&self, region: &str, credentials: SharedCredentialsProvider) -> Clients {
        let config = self.sdk_config(region, Some(credentials));
        Clients {
            region: region.to_owned(),
            secrets: aws_sdk_secretsmanager::Client::new(&config),
            parameters: aws_sdk_ssm::Client::new(&config),
        }
    }
}

/// One region's clients.
#[derive(Debug, Clone)]
pub struct Clients {
    /// The region.
    pub region: String,
    secrets: aws_sdk_secretsmanager::Client,
    parameters: aws_sdk_ssm::Client,
}

/// A value read from AWS.
#[derive(Debug, Clone)]
pub struct Value {
    /// The secret string's bytes, or the binary secret.
    pub bytes: Secret<Vec<u8>>,
    /// Secrets Manager `VersionId`, or the SSM version number.
    pub version: String,
}

/// Why a call (or one object within a batch) failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// AWS refused the request (4xx): final, no failover.
    Client {
        /// AWS's error code, e.g. `ResourceNotFoundException`.
        code: String,
        /// AWS's message.
        message: String,
    },
    /// AWS failed or did not answer (5xx, timeout, connection): the failover region may help.
    Server(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Client { code, message } => write!(f, "{code}: {message}"),
            Self::Server(message) => f.write_str(message),
        }
    }
}

/// One AWS request: the unit of batching and of sharing between pods of one identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Request {
    /// `BatchGetSecretValue` of current versions.
    SecretBatch(Vec<Read>),
    /// `GetSecretValue` of one secret (a version, a label, or a lone secret).
    Secret(Read),
    /// `GetParameters` (distinct names, so answers match their requests).
    Parameters(Vec<Read>),
}

/// The outcome of each read in a request.
pub type Answers = BTreeMap<Read, Result<Value, CallError>>;

/// Groups reads into requests: current Secrets Manager values in batches (when `batch`),
/// other Secrets Manager reads one by one, and SSM names ten at a time.
pub fn plan<'a>(reads: impl IntoIterator<Item = &'a Read>, batch: bool) -> Vec<Request> {
    let mut current = Vec::new();
    let mut requests = Vec::new();
    let mut parameter_batches: Vec<Vec<Read>> = Vec::new();
    for read in reads {
        match read.kind {
            Kind::SecretsManager if batch && read.version.is_none() && read.label.is_none() => {
                current.push(read.clone());
            }
            Kind::SecretsManager => requests.push(Request::Secret(read.clone())),
            Kind::Parameter => {
                let slot = parameter_batches
                    .iter_mut()
                    .find(|b| b.len() < PARAMETER_BATCH && b.iter().all(|r| r.name != read.name));
                match slot {
                    Some(batch) => batch.push(read.clone()),
                    None => parameter_batches.push(vec![read.clone()]),
                }
            }
        }
    }
    if current.len() == 1 {
        requests.extend(current.drain(..).map(Request::Secret));
    }
    requests.extend(
        current
            .chunks(SECRET_BATCH)
            .map(|chunk| Request::SecretBatch(chunk.to_vec())),
    );
    requests.extend(parameter_batches.into_iter().map(Request::Parameters));
    requests
}

impl Request {
    /// The reads this request answers.
    pub fn reads(&self) -> Vec<Read> {
        match self {
            Self::SecretBatch(reads) | Self::Parameters(reads) => reads.clone(),
            Self::Secret(read) => vec![read.clone()],
        }
    }

    /// The AWS operation, for logs and call counts.
    pub fn operation(&self) -> &'static str {
        match self {
            Self::SecretBatch(_) => "BatchGetSecretValue",
            Self::Secret(_) => "GetSecretValue",
            Self::Parameters(_) => "GetParameters",
        }
    }
}

impl Clients {
    /// Sends one request. `Err` is a failure of the whole call; objects missing from a batch
    /// answer are failures of their own.
    pub async fn send(&self, request: &Request) -> Result<Answers, CallError> {
        match request {
            Request::Secret(read) => {
                let value = self.secret(read).await?;
                Ok(BTreeMap::from([(read.clone(), Ok(value))]))
            }
            Request::SecretBatch(reads) => self.secret_batch(reads).await,
            Request::Parameters(reads) => self.parameters(reads).await,
        }
    }

    async fn secret(&self, read: &Read) -> Result<Value, CallError> {
        let reply = self
            .secrets
            .get_secret_value()
            .secret_id(&read.name)
            .set_version_id(read.version.clone())
            .set_version_stage(read.label.clone())
            .send()
            .await
            .map_err(classify)?;
        secret_value(
            reply.secret_string(),
            reply.secret_binary().map(|b| b.as_ref()),
            reply.version_id(),
        )
    }

    async fn secret_batch(&self, reads: &[Read]) -> Result<Answers, CallError> {
        let ids: Vec<String> = reads.iter().map(|r| r.name.clone()).collect();
        let mut answers = Answers::new();
        let mut next_token: Option<String> = None;
        loop {
            let reply = self
                .secrets
                .batch_get_secret_value()
                .set_secret_id_list(Some(ids.clone()))
                .set_next_token(next_token.take())
                .send()
                .await
                .map_err(classify)?;
            for entry in reply.secret_values() {
                let value = secret_value(
                    entry.secret_string(),
                    entry.secret_binary().map(|b| b.as_ref()),
                    entry.version_id(),
                );
                for read in reads.iter().filter(|r| {
                    entry.name() == Some(r.name.as_str()) || entry.arn() == Some(r.name.as_str())
                }) {
                    answers.insert(read.clone(), value.clone());
                }
            }
            for error in reply.errors() {
                let failure = CallError::Client {
                    code: error.error_code().unwrap_or("Error").to_owned(),
                    message: error.message().unwrap_or_default().to_owned(),
                };
                for read in reads
                    .iter()
                    .filter(|r| error.secret_id() == Some(r.name.as_str()))
                {
                    answers.insert(read.clone(), Err(failure.clone()));
                }
            }
            next_token = reply.next_token().map(str::to_owned);
            if next_token.is_none() {
                break;
            }
        }
        // A secret named by a partial ARN may come back under another name: ask for it alone.
        for read in reads {
            if !answers.contains_key(read) {
                let value = self.secret(read).await;
                answers.insert(read.clone(), value);
            }
        }
        Ok(answers)
    }

    async fn parameters(&self, reads: &[Read]) -> Result<Answers, CallError> {
        let names: Vec<String> = reads.iter().map(parameter_selector).collect();
        let reply = self
            .parameters
            .get_parameters()
            .set_names(Some(names.clone()))
            .with_decryption(true)
            .send()
            .await
            .map_err(classify)?;
        let invalid = reply.invalid_parameters();
        let mut answers = Answers::new();
        for (read, selector) in reads.iter().zip(&names) {
            if invalid.iter().any(|name| name == selector) {
                answers.insert(
                    read.clone(),
                    Err(CallError::Client {
                        code: "ParameterNotFound".to_owned(),
                        message: format!("invalid parameters: {selector}"),
                    }),
                );
                continue;
            }
            let found = reply.parameters().iter().find(|p| {
                p.name() == Some(read.name.as_str())
                    || p.arn() == Some(read.name.as_str())
                    || p.name() == parameter_name_of_arn(&read.name).as_deref()
            });
            let answer = match found {
                Some(parameter) => Ok(Value {
                    bytes: Secret::new(parameter.value().unwrap_or_default().as_bytes().to_vec()),
                    version: parameter.version().to_string(),
                }),
                None => Err(CallError::Client {
                    code: "ParameterNotFound".to_owned(),
                    message: format!("invalid parameters: {selector}"),
                }),
            };
            answers.insert(read.clone(), answer);
        }
        Ok(answers)
    }
}

/// `name:version` or `name:label`, as `GetParameters` takes them.
fn parameter_selector(read: &Read) -> String {
    match (&read.version, &read.label) {
        (Some(version), _) => format!("{}:{version}", read.name),
        (None, Some(label)) => format!("{}:{label}", read.name),
        (None, None) => read.name.clone(),
    }
}

/// The parameter name inside an SSM ARN (`arn:aws:ssm:r:a:parameter/x` is `/x` or `x`).
fn parameter_name_of_arn(name: &str) -> Option<String> {
    let resource = name.strip_prefix("arn:")?.splitn(5, ':').nth(4)?;
    let path = resource.strip_prefix("parameter")?;
    Some(if path.starts_with("//") {
        path[1..].to_owned()
    } else if let Some(rest) = path.strip_prefix('/') {
        if rest.contains('/') {
            path.to_owned()
        } else {
            rest.to_owned()
        }
    } else {
        path.to_owned()
    })
}

fn secret_value(
    string: Option<&str>,
    binary: Option<&[u8]>,
    version: Option<&str>,
) -> Result<Value, CallError> {
    let bytes = match (string, binary) {
        (Some(text), _) => text.as_bytes().to_vec(),
        (None, Some(binary)) => binary.to_vec(),
        (None, None) => {
            return Err(CallError::Client {
                code: "ResourceNotFoundException".to_owned(),
                message: "the secret version has no value".to_owned(),
            });
        }
    };
    Ok(Value {
        bytes: Secret::new(bytes),
        version: version.unwrap_or_default().to_owned(),
    })
}

/// Sorts an SDK failure into final (4xx) and failover-eligible.
fn classify<E>(err: SdkError<E, HttpResponse>) -> CallError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    if let SdkError::ServiceError(context) = &err {
        let status = context.raw().status().as_u16();
        if status < 500 {
            return CallError::Client {
                code: context.err().code().unwrap_or("Error").to_owned(),
                message: context.err().message().unwrap_or_default().to_owned(),
            };
        }
    }
    CallError::Server(describe(&err))
}

/// An SDK error with its causes, which name the endpoint and never a value.
pub fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    DisplayErrorContext(err).to_string()
}

/// What kind of ASCP error a read failure is, by AWS error code.
pub fn is_not_found(code: &str) -> bool {
    matches!(
        code,
        "ResourceNotFoundException"
            | "ParameterNotFound"
            | "ParameterVersionNotFound"
            | "ParameterVersionLabelNotFound"
    )
}

/// Codes meaning the credentials themselves were refused.
pub fn is_bad_credentials(code: &str) -> bool {
    matches!(
        code,
        "UnrecognizedClientException"
            | "InvalidSignatureException"
            | "ExpiredTokenException"
            | "InvalidClientTokenId"
            | "ExpiredToken"
            | "SignatureDoesNotMatch"
    )
}

/// Codes meaning AWS throttled us beyond the retries.
pub fn is_throttling(code: &str) -> bool {
    matches!(
        code,
        "ThrottlingException" | "Throttling" | "TooManyRequestsException" | "RequestLimitExceeded"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(kind: Kind, name: &str, version: Option<&str>, label: Option<&str>) -> Read {
        Read {
            kind,
            name: name.to_owned(),
            version: version.map(str::to_owned),
            label: label.map(str::to_owned),
        }
    }

    #[test]
    fn current_secrets_are_batched_by_twenty_and_parameters_by_ten_distinct_names() {
        let mut reads: Vec<Read> = (0..45)
            .map(|i| read(Kind::SecretsManager, &format!("s{i}"), None, None))
            .collect();
        reads.push(read(Kind::SecretsManager, "pinned", Some("v1"), None));
        reads.push(read(Kind::SecretsManager, "s0", None, Some("AWSPREVIOUS")));
        reads.extend((0..11).map(|i| read(Kind::Parameter, &format!("p{i}"), None, None)));
        reads.push(read(Kind::Parameter, "p0", Some("1"), None));
        let requests = plan(&reads, true);
        let count = |op: &str| requests.iter().filter(|r| r.operation() == op).count();
        assert_eq!(count("BatchGetSecretValue"), 3);
        assert_eq!(count("GetSecretValue"), 2);
        assert_eq!(count("GetParameters"), 2);
        for request in &requests {
            if let Request::Parameters(batch) = request {
                let names: std::collections::BTreeSet<_> = batch.iter().map(|r| &r.name).collect();
                assert_eq!(names.len(), batch.len(), "a name twice in one batch");
            }
        }
        // Without batching (or with one secret) every secret is its own call.
        assert_eq!(plan(&reads[..45], false).len(), 45);
        assert!(matches!(plan(&reads[..1], true)[..], [Request::Secret(_)]));
    }

    #[test]
    fn parameter_names_are_found_in_arns() {
        assert_eq!(
            parameter_name_of_arn("arn:aws:ssm:us-east-1:1:parameter/app/db").as_deref(),
            Some("/app/db")
        );
        assert_eq!(
            parameter_name_of_arn("arn:aws:ssm:us-east-1:1:parameter/db").as_deref(),
            Some("db")
        );
        assert_eq!(parameter_name_of_arn("db"), None);
        assert_eq!(
            parameter_selector(&read(Kind::Parameter, "db", None, Some("prod"))),
            "db:prod"
        );
    }
}
