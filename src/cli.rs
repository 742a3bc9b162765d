//! The command line. Every flag has an environment variable; the upstream driver's flag names
//! are accepted as they are, and an upstream-style invocation (flags only) means `node`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand};

/// Kubernetes Secrets Store CSI driver: mounts secrets from external stores into pods.
#[derive(Debug, Parser)]
#[command(
    name = "secrets-store-csi-driver",
    disable_version_flag = true,
    args_override_self = true
)]
pub struct Cli {
    /// Print the version as JSON (BuildVersion, GitCommit, BuildDate) and exit.
    #[arg(long, global = true)]
    pub version: bool,
    /// Logging options.
    #[command(flatten)]
    pub log: LogArgs,
    /// What to run.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// klog flags of upstream manifests that were accepted and dropped, to be logged.
    #[arg(skip)]
    pub ignored_klog_flags: Vec<String>,
}

/// The driver's modes.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the CSI node plugin (the DaemonSet container).
    Node(NodeArgs),
    /// Fetch a SecretProviderClass's objects into a directory, without kubelet or a cluster.
    Mount(MountArgs),
    /// Remove what `mount` created: unmount the tmpfs and delete the directory.
    Unmount(UnmountArgs),
    /// Serve a built-in provider on a plugin socket, for the upstream driver or another node.
    Provider(ProviderServeArgs),
    /// Sync Kubernetes Secrets from SecretSync objects, without any pod (a Deployment).
    SyncController(SyncControllerArgs),
    /// Print the CustomResourceDefinitions (YAML) generated from the driver's types.
    Crdgen(CrdgenArgs),
}

/// `sync-controller` flags (upstream secrets-store-sync-controller's names).
#[derive(Debug, Args)]
pub struct SyncControllerArgs {
    /// Audiences tokens may be requested for (comma-separated); a class's built-in provider
    /// names the one it needs, a plugin gets all.
    #[arg(
        long,
        env = "TOKEN_REQUEST_AUDIENCE",
        value_delimiter = ',',
        default_value = ""
    )]
    pub token_request_audience: Vec<String>,
    /// How often every Secret is fetched again (a class's
    /// `secrets-store.csi.k8s.io/rotation-poll-interval` annotation overrides it); `0s` never.
    #[arg(long, env = "ROTATION_POLL_INTERVAL", default_value = "12h", value_parser = humantime::parse_duration)]
    pub rotation_poll_interval: Duration,
    /// Only one replica writes at a time, the holder of a Lease.
    #[arg(long, env = "LEADER_ELECT", action = ArgAction::Set, num_args = 0..=1,
          default_value_t = false, default_missing_value = "true")]
    pub leader_elect: bool,
    /// Namespace of the Lease; the pod's own namespace when empty.
    #[arg(long, env = "LEADER_ELECTION_NAMESPACE", default_value = "")]
    pub leader_election_namespace: String,
    /// Name of the Lease.
    #[arg(long, default_value = "secrets-store-sync-controller")]
    pub leader_election_id: String,
    /// How long a lease is valid after its last renewal.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub leader_election_lease_duration: Duration,
    /// How long the leader keeps trying to renew before it stops.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub leader_election_renew_deadline: Duration,
    /// How often to try to acquire or renew the lease.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub leader_election_retry_period: Duration,
    /// `spec.secretSyncControllerName` served besides the empty one.
    #[arg(
        long,
        env = "SECRET_SYNC_CONTROLLER_NAME",
        default_value = "secrets-store-sync-controller"
    )]
    pub secret_sync_controller_name: String,
    /// Listen address of `/metrics`.
    #[arg(long, env = "METRICS_BIND_ADDRESS", default_value = ":8085")]
    pub metrics_bind_address: String,
    /// Listen address of `/healthz` and `/readyz`; empty for none.
    #[arg(long, env = "HEALTH_PROBE_BIND_ADDRESS", default_value = ":8081")]
    pub health_probe_bind_address: String,
    /// This pod's name (downward API), told to providers and used as the lease identity.
    #[arg(long, env = "SYNC_CONTROLLER_POD_NAME", default_value = "")]
    pub pod_name: String,
    /// This pod's UID (downward API), told to providers.
    #[arg(long, env = "SYNC_CONTROLLER_POD_UID", default_value = "")]
    pub pod_uid: String,
    /// This pod's namespace (downward API), the default of the Lease's.
    #[arg(long, env = "SYNC_CONTROLLER_POD_NAMESPACE", default_value = "")]
    pub pod_namespace: String,
    /// SecretSyncs reconciled at once.
    #[arg(long, env = "CONCURRENT_SYNCS", default_value_t = 16)]
    pub concurrent_syncs: u16,
    /// How long one fetch from a provider may take.
    #[arg(long, env = "FETCH_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub fetch_timeout: Duration,
    /// Kubeconfig file; in-cluster configuration is used without it.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Provider sockets and limits (`--provider-volume` as upstream's controller).
    #[command(flatten)]
    pub providers: ProviderArgs,
    /// The built-in providers and their settings.
    #[command(flatten)]
    pub builtins: BuiltinArgs,
    /// The key of object versions and of `status.syncHash`: shared by every replica (a
    /// mounted Secret) so that a failover rewrites nothing.
    #[command(flatten)]
    pub version_key: VersionKeyArgs,
}

/// `crdgen` flags.
#[derive(Debug, Args)]
pub struct CrdgenArgs {
    /// Write one file per CRD into this directory instead of printing them.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
}

/// Settings of the built-in `vault` provider; SecretProviderClass parameters override them.
/// Each reads the environment variable HashiCorp's tools use.
#[derive(Debug, Clone, Args)]
pub struct VaultArgs {
    /// Vault address when a class sets no `vaultAddress`.
    #[arg(long, env = "VAULT_ADDR", default_value = "https://127.0.0.1:8200")]
    pub vault_address: String,
    /// Auth mount (Kubernetes or JWT auth) when a class sets no `vaultAuthMountPath`.
    #[arg(long, env = "VAULT_AUTH_MOUNT", default_value = "kubernetes")]
    pub vault_mount: String,
    /// Vault Enterprise / OpenBao namespace when a class sets no `vaultNamespace`.
    #[arg(long, env = "VAULT_NAMESPACE")]
    pub vault_namespace: Option<String>,
    /// PEM CA bundle to trust for Vault (a path on the node).
    #[arg(long, env = "VAULT_CACERT")]
    pub vault_tls_ca_cert: Option<PathBuf>,
    /// Directory of PEM CAs to trust for Vault.
    #[arg(long, env = "VAULT_CAPATH")]
    pub vault_tls_ca_directory: Option<PathBuf>,
    /// Name to verify Vault's certificate against.
    #[arg(long, env = "VAULT_TLS_SERVER_NAME")]
    pub vault_tls_server_name: Option<String>,
    /// Client certificate for mutual TLS.
    #[arg(long, env = "VAULT_CLIENT_CERT")]
    pub vault_tls_client_cert: Option<PathBuf>,
    /// Client key for mutual TLS.
    #[arg(long, env = "VAULT_CLIENT_KEY")]
    pub vault_tls_client_key: Option<PathBuf>,
    /// Accept any certificate from Vault (testing only).
    #[arg(long, env = "VAULT_SKIP_VERIFY", action = ArgAction::Set, num_args = 0..=1,
          default_value_t = false, default_missing_value = "true")]
    pub vault_tls_skip_verify: bool,
    /// Workload identities whose Vault tokens (and shared reads) are kept.
    #[arg(long, env = "VAULT_CACHE_SIZE", default_value_t = 1000)]
    pub vault_cache_size: usize,
    /// How long a static read (no lease) is shared between pods of one workload identity;
    /// `0s` reads once per pod.
    #[arg(long, env = "VAULT_READ_CACHE_TTL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub vault_read_cache_ttl: Duration,
    /// Vault requests in flight per volume.
    #[arg(long, env = "VAULT_CONCURRENCY", default_value_t = 8)]
    pub vault_concurrency: usize,
    /// On rotation, renew a mounted dynamic secret's lease (at 2/3 of its TTL) instead of
    /// reading a new credential; a new one is read when the lease is not renewable, renewal
    /// fails or the max TTL is near. `false` reads a new credential on every rotation.
    #[arg(long, env = "VAULT_RENEW_LEASES", action = ArgAction::Set, num_args = 0..=1,
          default_value_t = true, default_missing_value = "true")]
    pub vault_renew_leases: bool,
    /// Revoke a volume's dynamic-secret leases when it is unpublished (the role's policy
    /// needs update on sys/leases/revoke); `false` lets them expire at their TTL.
    #[arg(long, env = "VAULT_REVOKE_LEASES", action = ArgAction::Set, num_args = 0..=1,
          default_value_t = true, default_missing_value = "true")]
    pub vault_revoke_leases: bool,
    /// Comma-separated directories in which SecretProviderClasses may name TLS files
    /// (`vaultCACertPath`, `vaultCADirectory`, `vaultTLSClientCertPath`,
    /// `vaultTLSClientKeyPath`). Without it a class may name none on a node; never below the
    /// kubelet root. `mount` reads any path.
    #[arg(long, env = "VAULT_TLS_ALLOWED_DIRS", value_delimiter = ',')]
    pub vault_tls_allowed_dirs: Vec<PathBuf>,
}

/// Settings of the built-in `aws` provider. Each reads the environment variable the AWS tools
/// use, where there is one.
#[derive(Debug, Clone, Args)]
pub struct AwsArgs {
    /// Region when a class sets no `region`; else the node's `topology.kubernetes.io/region`.
    #[arg(long, env = "AWS_REGION")]
    pub aws_region: Option<String>,
    /// Send every AWS call (STS, Secrets Manager, SSM) to this URL, e.g. a VPC endpoint or a
    /// test server.
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    pub aws_endpoint_url: Option<String>,
    /// Use AWS FIPS endpoints.
    #[arg(long, env = "AWS_USE_FIPS_ENDPOINT", action = ArgAction::Set, num_args = 0..=1,
          default_value_t = false, default_missing_value = "true")]
    pub aws_use_fips_endpoint: bool,
    /// Time limit of one attempt of one AWS call; a call that keeps timing out (3 attempts)
    /// moves to the class's failoverRegion.
    #[arg(long, env = "AWS_CALL_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub aws_call_timeout: Duration,
    /// EKS Pod Identity agent URL instead of http://169.254.170.23 and http://[fd00:ec2::23].
    #[arg(long, env = "AWS_POD_IDENTITY_ENDPOINT")]
    pub aws_pod_identity_endpoint: Option<String>,
    /// Time limit of one request to the Pod Identity agent.
    #[arg(long, env = "POD_IDENTITY_HTTP_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub pod_identity_http_timeout: Duration,
    /// How long an AWS read is shared between pods of one workload identity; `0s` reads once
    /// per pod.
    #[arg(long, env = "AWS_READ_CACHE_TTL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub aws_read_cache_ttl: Duration,
    /// AWS requests in flight per volume.
    #[arg(long, env = "AWS_CONCURRENCY", default_value_t = 8)]
    pub aws_concurrency: usize,
    /// Workload identities whose AWS credentials (and shared reads) are kept.
    #[arg(long, env = "AWS_CACHE_SIZE", default_value_t = 1000)]
    pub aws_cache_size: usize,
}

/// Settings of the built-in `gcp` provider. The environment variables are the GCP plugin's.
#[derive(Debug, Clone, Args)]
pub struct GcpArgs {
    /// Project of the workload identity pool (`PROJECT.svc.id.goog`); else the metadata
    /// server's.
    #[arg(long, env = "PROJECT")]
    pub gcp_project: Option<String>,
    /// The cluster's location, for the identity provider; else the metadata server's.
    #[arg(long, env = "CLUSTER_LOCATION")]
    pub gcp_cluster_location: Option<String>,
    /// The cluster's name, for the identity provider; else the metadata server's.
    #[arg(long, env = "CLUSTER_NAME")]
    pub gcp_cluster_name: Option<String>,
    /// The whole STS audience, for a fleet or other federated pool
    /// (`identitynamespace:POOL:PROVIDER` or a pool's provider name); replaces the three
    /// above.
    #[arg(long, env = "GCP_WORKLOAD_IDENTITY_AUDIENCE")]
    pub gcp_workload_identity_audience: Option<String>,
    /// Base of the GKE identity provider's name.
    #[arg(
        long,
        env = "GKE_WORKLOAD_IDENTITY_ENDPOINT",
        default_value = "https://container.googleapis.com/v1"
    )]
    pub gcp_workload_identity_endpoint: String,
    /// Where the pod's token is exchanged.
    #[arg(
        long,
        env = "GAIA_TOKEN_EXCHANGE_ENDPOINT",
        default_value = "https://securetoken.googleapis.com/v1/identitybindingtoken"
    )]
    pub gcp_token_exchange_endpoint: String,
    /// IAM Credentials API, for service-account impersonation.
    #[arg(
        long,
        env = "GCP_IAM_CREDENTIALS_ENDPOINT",
        default_value = "https://iamcredentials.googleapis.com"
    )]
    pub gcp_iam_credentials_endpoint: String,
    /// Secret Manager for global secrets (gRPC; `http://` for an emulator).
    #[arg(
        long,
        env = "GCP_SECRET_MANAGER_ENDPOINT",
        default_value = "https://secretmanager.googleapis.com"
    )]
    pub gcp_secret_manager_endpoint: String,
    /// Secret Manager for regional secrets; `{location}` is the secret's location.
    #[arg(
        long,
        env = "GCP_REGIONAL_SECRET_MANAGER_ENDPOINT",
        default_value = "https://secretmanager.{location}.rep.googleapis.com"
    )]
    pub gcp_regional_secret_manager_endpoint: String,
    /// The GCE metadata server, asked for the project and cluster when not set.
    #[arg(
        long,
        env = "GCE_METADATA_HOST",
        default_value = "metadata.google.internal"
    )]
    pub gcp_metadata_host: String,
    /// How long a Secret Manager read is shared between pods of one workload identity; `0s`
    /// reads once per pod.
    #[arg(long, env = "GCP_READ_CACHE_TTL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub gcp_read_cache_ttl: Duration,
    /// Secret Manager requests in flight per volume.
    #[arg(long, env = "GCP_CONCURRENCY", default_value_t = 8)]
    pub gcp_concurrency: usize,
    /// Workload identities whose tokens (and shared reads) are kept.
    #[arg(long, env = "GCP_CACHE_SIZE", default_value_t = 1000)]
    pub gcp_cache_size: usize,
}

/// Settings of the built-in `azure` provider.
#[derive(Debug, Clone, Args)]
pub struct AzureArgs {
    /// Cloud of classes that set no `cloudName` (the Azure plugin's `--cloud-name`):
    /// AzurePublicCloud, AzureChinaCloud, AzureUSGovernmentCloud or AzureGermanCloud.
    #[arg(long, env = "AZURE_CLOUD_NAME", default_value = "AzurePublicCloud", value_parser = parse_cloud)]
    pub azure_cloud_name: String,
    /// Entra ID authority host instead of the cloud's (`https://login.microsoftonline.com/`).
    #[arg(long, env = "AZURE_AUTHORITY_HOST")]
    pub azure_authority_host: Option<String>,
    /// Key Vault URL with `{vault}` for the vault's name, instead of
    /// `https://{vault}.vault.azure.net` (private endpoints, emulators).
    #[arg(long, env = "AZURE_KEYVAULT_ENDPOINT")]
    pub azure_keyvault_endpoint: Option<String>,
    /// Also write a certificate secret's chain to `NAME.crt` and its key to `NAME.key` (the
    /// plugin's `--write-cert-and-key-in-separate-files`).
    #[arg(long, env = "AZURE_WRITE_CERT_AND_KEY_IN_SEPARATE_FILES", action = ArgAction::Set,
          num_args = 0..=1, default_value_t = false, default_missing_value = "true")]
    pub azure_write_cert_and_key_in_separate_files: bool,
    /// How long a Key Vault read is shared between pods of one identity; `0s` reads once per
    /// pod.
    #[arg(long, env = "AZURE_READ_CACHE_TTL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub azure_read_cache_ttl: Duration,
    /// Key Vault requests in flight per volume.
    #[arg(long, env = "AZURE_CONCURRENCY", default_value_t = 8)]
    pub azure_concurrency: usize,
    /// Identities whose tokens (and shared reads) are kept.
    #[arg(long, env = "AZURE_CACHE_SIZE", default_value_t = 1000)]
    pub azure_cache_size: usize,
}

fn parse_cloud(name: &str) -> Result<String, String> {
    crate::provider::azure::config::Cloud::from_name(name)
        .map(|_| name.to_owned())
        .ok_or_else(|| {
            "use AzurePublicCloud, AzureChinaCloud, AzureUSGovernmentCloud or AzureGermanCloud"
                .to_owned()
        })
}

/// Which built-in providers run in-process, and their settings.
#[derive(Debug, Clone, Args)]
pub struct BuiltinArgs {
    /// Built-in providers to serve in-process (comma-separated). A name left out is looked up
    /// as a plugin socket instead, e.g. to keep running vault-csi-provider.
    #[arg(
        long,
        env = "BUILTIN_PROVIDERS",
        value_delimiter = ',',
        default_value = "vault,aws"
    )]
    pub builtin_providers: Vec<String>,
    /// Vault settings.
    #[command(flatten)]
    pub vault: VaultArgs,
    /// AWS settings.
    #[command(flatten)]
    pub aws: AwsArgs,
    /// Google Secret Manager settings.
    #[command(flatten)]
    pub gcp: GcpArgs,
    /// Azure Key Vault settings.
    #[command(flatten)]
    pub azure: AzureArgs,
}

/// Where built-in providers keep the key of their object versions.
#[derive(Debug, Clone, Args)]
pub struct VersionKeyArgs {
    /// File holding the key of object versions (created 0600 if missing), so versions survive
    /// restarts. Default for `node`: `version.key` next to the CSI socket.
    #[arg(long, env = "VERSION_KEY_FILE")]
    pub version_key_file: Option<PathBuf>,
}

/// `provider` flags.
#[derive(Debug, Args)]
pub struct ProviderServeArgs {
    /// The built-in provider to serve (`vault`, `aws`, `gcp` or `azure`).
    pub name: String,
    /// Socket to listen on, `unix:///var/run/secrets-store-csi-providers/<name>.sock`.
    #[arg(long, env = "PROVIDER_ENDPOINT")]
    pub endpoint: String,
    /// This node's name, so `aws` finds the region label without reading the pod.
    #[arg(long, env = "KUBE_NODE_NAME")]
    pub node_name: Option<String>,
    /// Kubeconfig file; in-cluster configuration is used without it.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubelet's `--root-dir`, whose pods' volumes classes may never read files from.
    #[arg(long, env = "KUBELET_ROOT_DIR", default_value = "/var/lib/kubelet")]
    pub kubelet_root_dir: PathBuf,
    /// Vault settings.
    #[command(flatten)]
    pub vault: VaultArgs,
    /// AWS settings.
    #[command(flatten)]
    pub aws: AwsArgs,
    /// Google Secret Manager settings.
    #[command(flatten)]
    pub gcp: GcpArgs,
    /// Azure Key Vault settings.
    #[command(flatten)]
    pub azure: AzureArgs,
    /// Object version key.
    #[command(flatten)]
    pub version_key: VersionKeyArgs,
}

/// Log format and verbosity.
#[derive(Debug, Args)]
pub struct LogArgs {
    /// Log as JSON lines instead of text.
    #[arg(long, env = "LOG_FORMAT_JSON", global = true, action = ArgAction::Set, num_args = 0..=1,
          default_value_t = false, default_missing_value = "true")]
    pub log_format_json: bool,
    /// klog-style verbosity: 0-2 info, 3-4 debug, 5 and up trace. `RUST_LOG` overrides it.
    #[arg(
        short = 'v',
        long = "v",
        env = "LOG_VERBOSITY",
        global = true,
        default_value_t = 0
    )]
    pub verbosity: u8,
}

/// Where provider plugin sockets are and how much they may send.
#[derive(Debug, Clone, Args)]
pub struct ProviderArgs {
    /// Primary directory of provider plugin sockets (`<dir>/<provider>.sock`), searched last.
    #[arg(
        long,
        env = "PROVIDER_VOLUME",
        default_value = "/var/run/secrets-store-csi-providers"
    )]
    pub provider_volume: PathBuf,
    /// Comma-separated extra socket directories, searched first, in order.
    #[arg(
        long,
        env = "ADDITIONAL_PROVIDER_VOLUME_PATHS",
        value_delimiter = ',',
        default_value = "/etc/kubernetes/secrets-store-csi-providers"
    )]
    pub additional_provider_volume_paths: Vec<String>,
    /// Largest provider response accepted, in bytes; also what a built-in provider may read
    /// from its backend for one volume.
    #[arg(long, env = "MAX_CALL_RECV_MSG_SIZE", default_value_t = crate::limits::DEFAULT_VOLUME_BYTES)]
    pub max_call_recv_msg_size: usize,
    /// Size limit of each volume's tmpfs (bytes, or with a Ki/Mi/Gi suffix).
    #[arg(long, env = "TMPFS_SIZE", default_value = "32Mi", value_parser = parse_size)]
    pub tmpfs_size: u64,
}

impl ProviderArgs {
    /// Socket directories in upstream's search order.
    pub fn socket_dirs(&self) -> Vec<PathBuf> {
        self.additional_provider_volume_paths
            .iter()
            .map(|p| p.trim())
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .chain(std::iter::once(self.provider_volume.clone()))
            .collect()
    }
}

/// `node` flags (upstream names).
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// CSI endpoint, `unix:///csi/csi.sock`.
    #[arg(long, env = "CSI_ENDPOINT", default_value = "unix://tmp/csi.sock")]
    pub endpoint: String,
    /// Driver name reported to kubelet.
    #[arg(long, env = "DRIVER_NAME", default_value = "secrets-store.csi.k8s.io")]
    pub drivername: String,
    /// This node's name (downward API `spec.nodeName`).
    #[arg(long, env = "KUBE_NODE_NAME")]
    pub nodeid: String,
    /// Kubelet's `--root-dir`: targets must be its CSI volume paths,
    /// `<dir>/pods/<uid>/volumes/kubernetes.io~csi/<volume>/mount`.
    #[arg(long, env = "KUBELET_ROOT_DIR", default_value = "/var/lib/kubelet")]
    pub kubelet_root_dir: PathBuf,
    /// Volumes fetching from providers at once on this node; one namespace may hold a
    /// quarter of them.
    #[arg(long, env = "MAX_CONCURRENT_FETCHES", default_value_t = crate::limits::DEFAULT_CONCURRENT_FETCHES)]
    pub max_concurrent_fetches: usize,
    /// Provider sockets and limits.
    #[command(flatten)]
    pub providers: ProviderArgs,
    /// Re-fetch mounted volumes when kubelet republishes them (CSIDriver `requiresRepublish`).
    #[arg(long, env = "ENABLE_SECRET_ROTATION", action = ArgAction::Set, num_args = 0..=1,
          default_value_t = false, default_missing_value = "true")]
    pub enable_secret_rotation: bool,
    /// Minimum time between fetches of one mounted volume.
    #[arg(long, env = "ROTATION_POLL_INTERVAL", default_value = "2m", value_parser = humantime::parse_duration)]
    pub rotation_poll_interval: Duration,
    /// How often every synced Secret is rewritten from its mount even without a change
    /// (deleted and edited Secrets are repaired at once regardless).
    #[arg(long, env = "SECRET_SYNC_RESYNC_INTERVAL", default_value = "5m", value_parser = humantime::parse_duration)]
    pub secret_sync_resync_interval: Duration,
    /// When synced Secret values change, restart the Deployments, StatefulSets and DaemonSets
    /// that own the Secret (annotates their pod template), so env vars pick up new values.
    #[arg(long, env = "ROLLOUT_ON_SECRET_CHANGE", action = ArgAction::Set, num_args = 0..=1,
          default_value_t = false, default_missing_value = "true")]
    pub rollout_on_secret_change: bool,
    /// Listen address of `/metrics`; `:8095` means every interface.
    #[arg(long, env = "METRICS_ADDR", default_value = ":8095")]
    pub metrics_addr: String,
    /// Metrics backend; only `prometheus` exists.
    #[arg(long, env = "METRICS_BACKEND", default_value = "Prometheus")]
    pub metrics_backend: String,
    /// Enable the built-in `local` provider, jailed to this directory.
    #[arg(long, env = "LOCAL_PROVIDER_ROOT")]
    pub local_provider_root: Option<PathBuf>,
    /// Periodically ask every connected provider plugin for its version and log the outcome.
    #[arg(long, env = "PROVIDER_HEALTH_CHECK", action = ArgAction::Set, num_args = 0..=1,
          default_value_t = false, default_missing_value = "true")]
    pub provider_health_check: bool,
    /// Interval of the provider health check.
    #[arg(long, env = "PROVIDER_HEALTH_CHECK_INTERVAL", default_value = "2m", value_parser = humantime::parse_duration)]
    pub provider_health_check_interval: Duration,
    /// Accepted so that upstream manifests start unchanged; no profiling endpoint is served.
    #[arg(long, hide = true, action = ArgAction::Set, num_args = 0..=1,
          default_value_t = false, default_missing_value = "true")]
    pub enable_pprof: bool,
    /// Accepted with `--enable-pprof`; unused.
    #[arg(long, hide = true, default_value_t = 6065)]
    pub pprof_port: u16,
    /// Kubeconfig file; in-cluster configuration is used without it.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// The built-in providers and their settings.
    #[command(flatten)]
    pub builtins: BuiltinArgs,
    /// Object version key.
    #[command(flatten)]
    pub version_key: VersionKeyArgs,
}

/// `mount` flags.
#[derive(Debug, Args)]
pub struct MountArgs {
    /// SecretProviderClass YAML file.
    #[arg(long, env = "SSCSI_CLASS")]
    pub class: PathBuf,
    /// Directory to fill (created if missing).
    #[arg(long, env = "SSCSI_TARGET")]
    pub target: PathBuf,
    /// Pod name told to the provider.
    #[arg(long, env = "SSCSI_POD_NAME", default_value = "local")]
    pub pod_name: String,
    /// Namespace; defaults to the class's own, else `default`.
    #[arg(long, env = "SSCSI_NAMESPACE")]
    pub namespace: Option<String>,
    /// Service account told to the provider.
    #[arg(long, env = "SSCSI_SERVICE_ACCOUNT", default_value = "default")]
    pub service_account: String,
    /// Sets a class parameter, `KEY=VALUE`, over the file's (e.g. `vaultAddress=...`).
    #[arg(long = "attribute", value_parser = parse_key_value)]
    pub attributes: Vec<(String, String)>,
    /// Keep running and re-fetch at the rotation interval, reporting what changed.
    #[arg(long)]
    pub watch: bool,
    /// Interval of `--watch`.
    #[arg(long, env = "ROTATION_POLL_INTERVAL", default_value = "2m", value_parser = humantime::parse_duration)]
    pub rotation_poll_interval: Duration,
    /// Write into a plain directory even when running as root.
    #[arg(long)]
    pub plain_dir: bool,
    /// Provider sockets and limits.
    #[command(flatten)]
    pub providers: ProviderArgs,
    /// Vault settings.
    #[command(flatten)]
    pub vault: VaultArgs,
    /// Vault token file; without it `VAULT_TOKEN`, then `--vault-jwt-file`, is used.
    #[arg(long, env = "VAULT_TOKEN_FILE")]
    pub vault_token_file: Option<PathBuf>,
    /// JWT to log in with (JWT or Kubernetes auth, the class's `roleName`) instead of a token.
    #[arg(long, env = "VAULT_JWT_FILE")]
    pub vault_jwt_file: Option<PathBuf>,
    /// AWS settings; credentials come from the AWS environment (variables, profile).
    #[command(flatten)]
    pub aws: AwsArgs,
    /// Google Secret Manager settings; the token comes from `GOOGLE_OAUTH_ACCESS_TOKEN`.
    #[command(flatten)]
    pub gcp: GcpArgs,
    /// Azure Key Vault settings; the token comes from `AZURE_ACCESS_TOKEN`.
    #[command(flatten)]
    pub azure: AzureArgs,
    /// Object version key; without it versions are only comparable within one run.
    #[command(flatten)]
    pub version_key: VersionKeyArgs,
}

/// `unmount` flags.
#[derive(Debug, Args)]
pub struct UnmountArgs {
    /// Directory that `mount` filled.
    #[arg(long, env = "SSCSI_TARGET")]
    pub target: PathBuf,
}

/// Parses the process arguments; flags without a subcommand (the upstream DaemonSet's form)
/// run `node`.
pub fn parse() -> Cli {
    let (args, ignored) = without_klog_flags(std::env::args_os().collect());
    let mut cli = Cli::parse_from(with_default_command(args));
    cli.ignored_klog_flags = ignored;
    cli
}

/// klog's boolean flags (`klog.InitFlags`), which upstream's binaries all accept.
const KLOG_BOOL_FLAGS: &[&str] = &[
    "logtostderr",
    "alsologtostderr",
    "add_dir_header",
    "skip_headers",
    "skip_log_headers",
    "one_output",
];

/// klog's flags that take a value.
const KLOG_VALUE_FLAGS: &[&str] = &[
    "log_dir",
    "log_file",
    "log_file_max_size",
    "stderrthreshold",
    "vmodule",
    "log_backtrace_at",
];

/// Drops klog's flags (`-logtostderr`, `--vmodule=x=2`, `-log_file /f`, ...), so a DaemonSet
/// written for upstream starts; `-v` stays, since it sets this driver's verbosity. Returns the
/// remaining arguments and the dropped ones. Logs always go to stderr here.
fn without_klog_flags(args: Vec<std::ffi::OsString>) -> (Vec<std::ffi::OsString>, Vec<String>) {
    let mut kept = Vec::with_capacity(args.len());
    let mut ignored = Vec::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let Some(text) = arg.to_str() else {
            kept.push(arg);
            continue;
        };
        if text == "--" {
            kept.push(arg);
            kept.extend(args.by_ref());
            break;
        }
        let name = text.strip_prefix("--").or_else(|| text.strip_prefix('-'));
        let (name, has_value) = match name.map(|n| n.split_once('=')) {
            Some(Some((name, _))) => (name, true),
            Some(None) => (name.unwrap_or_default(), false),
            None => ("", false),
        };
        if KLOG_BOOL_FLAGS.contains(&name) {
            ignored.push(text.to_owned());
        } else if KLOG_VALUE_FLAGS.contains(&name) {
            let mut dropped = text.to_owned();
            if !has_value && let Some(value) = args.next() {
                dropped = format!("{dropped} {}", value.to_string_lossy());
            }
            ignored.push(dropped);
        } else {
            kept.push(arg);
        }
    }
    (kept, ignored)
}

fn with_default_command(mut args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let first = args.get(1).and_then(|a| a.to_str()).unwrap_or_default();
    let passes_through = ["-h", "--help", "--version", "-version", "help"];
    if first.starts_with('-') && !passes_through.contains(&first) {
        args.insert(1, "node".into());
    }
    // Go's flag package accepts single-dash long flags (`-endpoint=...`).
    args.into_iter()
        .map(|arg| match arg.to_str() {
            Some(s) if is_go_long_flag(s) => format!("-{s}").into(),
            _ => arg,
        })
        .collect()
}

/// `-endpoint=x` is a Go long flag; `-v`, `-v=5`, `-v5` and `-h` are short flags.
fn is_go_long_flag(arg: &str) -> bool {
    let Some(rest) = arg.strip_prefix('-') else {
        return false;
    };
    let verbosity = rest.strip_prefix('v').is_some_and(|v| {
        v.is_empty() || v.starts_with('=') || v.bytes().all(|b| b.is_ascii_digit())
    });
    !rest.starts_with('-') && rest.len() > 1 && !verbosity
}

/// Parses `32Mi`, `64M`, `1Gi` or a plain byte count.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, suffix) = text.split_at(split);
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size such as 32Mi"))?;
    let factor: u64 = match suffix {
        "" => 1,
        "k" | "K" => 1000,
        "Ki" => 1 << 10,
        "M" => 1_000_000,
        "Mi" => 1 << 20,
        "G" => 1_000_000_000,
        "Gi" => 1 << 30,
        _ => return Err(format!("{text:?} has an unknown unit; use Ki, Mi or Gi")),
    };
    number
        .checked_mul(factor)
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{text:?} is out of range"))
}

fn parse_key_value(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .filter(|(key, _)| !key.is_empty())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_args(args: &[&str]) -> Cli {
        let args = args.iter().map(std::ffi::OsString::from).collect();
        Cli::try_parse_from(with_default_command(args)).unwrap()
    }

    #[test]
    fn upstream_daemonset_args_run_node() {
        let cli = parse_args(&[
            "driver",
            "--endpoint=unix:///csi/csi.sock",
            "--nodeid=node-1",
            "--provider-volume=/var/run/secrets-store-csi-providers",
            "--additional-provider-volume-paths=/etc/a,/etc/b",
            "--enable-secret-rotation=true",
            "--rotation-poll-interval=30s",
            "--metrics-addr=:8095",
            "--provider-health-check=false",
            "--provider-health-check-interval=2m",
            "--max-call-recv-msg-size=4194304",
            "-v=5",
        ]);
        let Some(Command::Node(node)) = cli.command else {
            panic!("not node")
        };
        assert_eq!(node.nodeid, "node-1");
        assert!(node.enable_secret_rotation);
        assert_eq!(node.rotation_poll_interval, Duration::from_secs(30));
        assert_eq!(
            node.providers.socket_dirs(),
            ["/etc/a", "/etc/b", "/var/run/secrets-store-csi-providers"].map(PathBuf::from)
        );
        assert_eq!(cli.log.verbosity, 5);
    }

    #[test]
    fn go_style_single_dash_flags_work() {
        let cli = parse_args(&[
            "driver",
            "-endpoint=unix:///x.sock",
            "-nodeid=n",
            "-enable-secret-rotation",
        ]);
        let Some(Command::Node(node)) = cli.command else {
            panic!("not node")
        };
        assert_eq!(node.endpoint, "unix:///x.sock");
        assert!(node.enable_secret_rotation);
    }

    #[test]
    fn upstream_klog_flags_are_dropped_and_v_kept() {
        let args = [
            "driver",
            "-endpoint=unix:///x.sock",
            "-logtostderr",
            "--alsologtostderr=true",
            "-vmodule",
            "grpc=4",
            "--log_file=/var/log/x",
            "-stderrthreshold=INFO",
            "-v=5",
            "-nodeid=n",
        ]
        .map(std::ffi::OsString::from);
        let (kept, ignored) = without_klog_flags(args.to_vec());
        assert_eq!(
            ignored,
            [
                "-logtostderr",
                "--alsologtostderr=true",
                "-vmodule grpc=4",
                "--log_file=/var/log/x",
                "-stderrthreshold=INFO"
            ]
        );
        let cli = Cli::try_parse_from(with_default_command(kept)).unwrap();
        assert_eq!(cli.log.verbosity, 5);
        let Some(Command::Node(node)) = cli.command else {
            panic!("not node")
        };
        assert_eq!(node.nodeid, "n");
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("32Mi"), Ok(32 << 20));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert!(parse_size("0").is_err());
        assert!(parse_size("12Xi").is_err());
    }
}
