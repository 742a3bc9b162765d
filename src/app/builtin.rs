//! The one factory of built-in providers, shared by every mode: where a provider runs decides
//! its credentials, which TLS files a class may name and whether it may ask the cluster.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::bail;

use crate::cli::{AwsArgs, AzureArgs, GcpArgs, VaultArgs};
use crate::provider::Registry;
use crate::provider::aws::{self, AwsProvider};
use crate::provider::azure::{self, AzureProvider};
use crate::provider::gcp::{self, GcpProvider};
use crate::provider::local::{self, LocalProvider};
use crate::provider::vault::config::{TlsConfig, TlsFile, TlsPolicy};
use crate::provider::vault::{self, VaultProvider, auth::Credentials};
use crate::provider::version_key::VersionKey;

/// Where the built-in providers run.
pub(super) enum Site {
    /// The node plugin, or a plugin served to another driver: each pod's own token, Vault TLS
    /// files only from `--vault-tls-allowed-dirs` and never below the kubelet root, the
    /// cluster for IRSA and the node's region.
    Node {
        /// Kubelet's root directory.
        kubelet_root: PathBuf,
        /// The API client, if there is one.
        kube: Option<kube::Client>,
        /// This node's name, for its region label.
        node_name: Option<String>,
    },
    /// `mount` on an operator's machine: their own Vault credentials, AWS environment and
    /// files.
    Mount {
        /// A token, `VAULT_TOKEN` or a JWT file.
        vault_credentials: Credentials,
    },
}

/// Builds the built-in providers of one mode from its flags.
pub(super) struct Builtins<'a> {
    /// The `--vault-*` flags.
    pub vault: &'a VaultArgs,
    /// The `--aws-*` flags.
    pub aws: &'a AwsArgs,
    /// The `--gcp-*` flags.
    pub gcp: &'a GcpArgs,
    /// The `--azure-*` flags.
    pub azure: &'a AzureArgs,
    /// The key object versions are derived with.
    pub key: VersionKey,
    /// Where they run.
    pub site: Site,
}

impl Builtins<'_> {
    /// Adds the built-in providers named in `--builtin-providers` to `providers`.
    pub fn register(&self, mut providers: Registry, names: &[String]) -> anyhow::Result<Registry> {
        for name in names.iter().map(|n| n.trim()) {
            match name {
                "" => {}
                vault::NAME => {
                    providers = providers.with_builtin(vault::NAME, self.vault());
                    tracing::info!(default_address = %self.vault.vault_address, "built-in vault provider enabled");
                }
                aws::NAME => {
                    providers = providers.with_builtin(aws::NAME, self.aws());
                    tracing::info!(
                        region = self
                            .aws
                            .aws_region
                            .as_deref()
                            .unwrap_or("(from the node label)"),
                        endpoint = self.aws.aws_endpoint_url.as_deref().unwrap_or("(AWS)"),
                        "built-in aws provider enabled"
                    );
                }
                gcp::NAME => {
                    providers = providers.with_builtin(gcp::NAME, self.gcp());
                    tracing::info!(
                        secret_manager = %self.gcp.gcp_secret_manager_endpoint,
                        "built-in gcp provider enabled"
                    );
                }
                azure::NAME => {
                    providers = providers.with_builtin(azure::NAME, self.azure());
                    tracing::info!(
                        cloud = %self.azure.azure_cloud_name,
                        keyvault = self.azure.azure_keyvault_endpoint.as_deref().unwrap_or("(the cloud's)"),
                        "built-in azure provider enabled"
                    );
                }
                local::NAME => {
                    bail!(
                        "--builtin-providers: enable `local` with --local-provider-root DIR instead"
                    )
                }
                other => bail!(
                    "--builtin-providers: {other:?} is not a built-in provider; the built-ins are: vault, aws, gcp, azure"
                ),
            }
        }
        Ok(providers)
    }

    /// The `vault` provider.
    pub fn vault(&self) -> Arc<VaultProvider> {
        let args = self.vault;
        let operator = |path: &Option<PathBuf>| path.clone().map(TlsFile::operator);
        let (credentials, tls_policy) = match &self.site {
            Site::Node { kubelet_root, .. } => {
                (Credentials::PodToken, tls_policy(args, kubelet_root))
            }
            Site::Mount { vault_credentials } => (vault_credentials.clone(), TlsPolicy::default()),
        };
        Arc::new(VaultProvider::new(vault::Settings {
            defaults: vault::config::Defaults {
                address: args.vault_address.clone(),
                auth_mount: args.vault_mount.clone(),
                namespace: args.vault_namespace.clone().filter(|n| !n.is_empty()),
                tls: TlsConfig {
                    ca_cert: operator(&args.vault_tls_ca_cert),
                    ca_directory: operator(&args.vault_tls_ca_directory),
                    server_name: args.vault_tls_server_name.clone(),
                    skip_verify: args.vault_tls_skip_verify,
                    client_cert: operator(&args.vault_tls_client_cert),
                    client_key: operator(&args.vault_tls_client_key),
                },
                tls_policy,
            },
            credentials,
            read_cache_ttl: args.vault_read_cache_ttl,
            concurrency: args.vault_concurrency,
            cache_size: args.vault_cache_size,
            version_key: self.key.clone(),
            renew_leases: args.vault_renew_leases,
            revoke_leases: args.vault_revoke_leases,
        }))
    }

    /// The `aws` provider: on a node with pod identities (IRSA or Pod Identity), for `mount`
    /// with the AWS environment's own credentials.
    pub fn aws(&self) -> Arc<AwsProvider> {
        let args = self.aws;
        let (source, kube, node_name) = match &self.site {
            Site::Node {
                kube, node_name, ..
            } => (
                aws::auth::Source::Pod {
                    pod_identity_endpoint: args.aws_pod_identity_endpoint.clone(),
                    pod_identity_timeout: args.pod_identity_http_timeout,
                },
                kube.clone(),
                node_name.clone(),
            ),
            Site::Mount { .. } => (aws::auth::Source::DefaultChain, None, None),
        };
        Arc::new(AwsProvider::new(
            aws::Settings {
                region: args.aws_region.clone().filter(|r| !r.is_empty()),
                endpoints: aws::client::Endpoints::new(
                    args.aws_endpoint_url.clone(),
                    args.aws_use_fips_endpoint,
                    args.aws_call_timeout,
                ),
                source,
                read_cache_ttl: args.aws_read_cache_ttl,
                concurrency: args.aws_concurrency,
                cache_size: args.aws_cache_size,
            },
            kube,
            node_name,
        ))
    }

    /// The `gcp` provider: on a node each pod's workload identity, for `mount` the operator's
    /// access token (`GOOGLE_OAUTH_ACCESS_TOKEN`, as `gcloud auth print-access-token` prints).
    pub fn gcp(&self) -> Arc<GcpProvider> {
        let args = self.gcp;
        let some = |value: &Option<String>| value.clone().filter(|v| !v.trim().is_empty());
        let (source, kube) = match &self.site {
            Site::Node { kube, .. } => (
                gcp::auth::Source::Pod(gcp::auth::Pool {
                    audience: some(&args.gcp_workload_identity_audience),
                    project: some(&args.gcp_project),
                    cluster_location: some(&args.gcp_cluster_location),
                    cluster_name: some(&args.gcp_cluster_name),
                    provider_endpoint: args.gcp_workload_identity_endpoint.clone(),
                }),
                kube.clone(),
            ),
            Site::Mount { .. } => (
                gcp::auth::Source::AccessToken(crate::redact::Secret::new(
                    std::env::var("GOOGLE_OAUTH_ACCESS_TOKEN").unwrap_or_default(),
                )),
                None,
            ),
        };
        let metadata = if args.gcp_metadata_host.contains("://") {
            args.gcp_metadata_host.clone()
        } else {
            format!("http://{}", args.gcp_metadata_host)
        };
        Arc::new(GcpProvider::new(
            gcp::Settings {
                endpoints: gcp::client::Endpoints {
                    secret_manager: args.gcp_secret_manager_endpoint.clone(),
                    regional_secret_manager: args.gcp_regional_secret_manager_endpoint.clone(),
                    token_exchange: args.gcp_token_exchange_endpoint.clone(),
                    iam_credentials: args.gcp_iam_credentials_endpoint.clone(),
                    metadata,
                },
                source,
                read_cache_ttl: args.gcp_read_cache_ttl,
                concurrency: args.gcp_concurrency,
                cache_size: args.gcp_cache_size,
            },
            kube,
        ))
    }

    /// The `azure` provider: on a node each pod's workload identity (or its volume's service
    /// principal), for `mount` the operator's access token (`AZURE_ACCESS_TOKEN`).
    pub fn azure(&self) -> Arc<AzureProvider> {
        let args = self.azure;
        let some = |value: &Option<String>| value.clone().filter(|v| !v.trim().is_empty());
        let source = match &self.site {
            Site::Node { .. } => azure::auth::Source::Pod,
            Site::Mount { .. } => azure::auth::Source::AccessToken(crate::redact::Secret::new(
                std::env::var("AZURE_ACCESS_TOKEN").unwrap_or_default(),
            )),
        };
        Arc::new(AzureProvider::new(azure::Settings {
            endpoints: azure::client::Endpoints {
                authority: some(&args.azure_authority_host),
                vault: some(&args.azure_keyvault_endpoint),
            },
            cloud: azure::config::Cloud::from_name(&args.azure_cloud_name)
                .unwrap_or(azure::config::Cloud::Public),
            source,
            separate_cert_and_key: args.azure_write_cert_and_key_in_separate_files,
            read_cache_ttl: args.azure_read_cache_ttl,
            concurrency: args.azure_concurrency,
            cache_size: args.azure_cache_size,
        }))
    }

    /// The `local` provider reading below `root`: jailed there on a node, relative to the
    /// class file for `mount`.
    pub fn local(&self, root: PathBuf) -> Arc<LocalProvider> {
        Arc::new(match self.site {
            Site::Node { .. } => LocalProvider::jailed(root, self.key.clone()),
            Site::Mount { .. } => LocalProvider::unjailed(root, self.key.clone()),
        })
    }
}

/// Where classes may name Vault TLS files on a node: only in `--vault-tls-allowed-dirs`, never
/// below the kubelet root.
fn tls_policy(args: &VaultArgs, kubelet_root: &Path) -> TlsPolicy {
    let canonical = |dir: &Path| dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    let allowed = args
        .vault_tls_allowed_dirs
        .iter()
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| canonical(dir))
        .collect();
    TlsPolicy {
        allowed_dirs: Some(allowed),
        forbidden_dirs: vec![kubelet_root.to_owned(), canonical(kubelet_root)],
    }
}
