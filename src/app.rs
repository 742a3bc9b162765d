//! Wiring: builds each mode's pipeline context and runs it until done or shut down.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::class::{Class, KubeClasses, StaticClasses};
use crate::cli::{
    AwsArgs, Cli, Command, CrdgenArgs, MountArgs, NodeArgs, ProviderArgs, ProviderServeArgs,
    UnmountArgs, VaultArgs,
};
use crate::crd::SecretProviderClass;
use crate::csi::{self, DriverInfo};
use crate::metrics::{self, Metrics};
use crate::pod::{self as attr, PodInfo};
use crate::pod_status::PodStatusWriter;
use crate::provider::aws::{self, AwsProvider};
use crate::provider::local::LocalProvider;
use crate::provider::vault::config::{TlsConfig, TlsFile, TlsPolicy};
use crate::provider::vault::{self, VaultProvider, auth::Credentials};
use crate::provider::version_key::VersionKey;
use crate::provider::{ObjectVersion, Provider, Registry, RegistryConfig, serve};
use crate::publish::{self, Context, Mode, PublishRequest, Published};
use crate::volume::target::KubeletRoot;
use crate::volume::{MountMode, TmpfsOptions, mount};
use crate::{events, grpc, shutdown, sync};

/// The version printed by `--version` and reported to kubelet.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Runs the selected mode.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    // One TLS stack for kube, Vault and AWS.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match cli.command {
        Some(Command::Node(args)) => run_node(args).await,
        Some(Command::Mount(args)) => run_mount(args).await,
        Some(Command::Unmount(args)) => run_unmount(&args),
        Some(Command::Provider(args)) => run_provider(args).await,
        Some(Command::Crdgen(args)) => run_crdgen(&args),
        None => bail!("no command given: run `secrets-store-csi-driver --help`"),
    }
}

/// `--version` output, in upstream's JSON shape.
pub fn version_json() -> String {
    serde_json::json!({
        "BuildVersion": VERSION,
        "GitCommit": option_env!("GIT_COMMIT").unwrap_or("unknown"),
        "BuildDate": option_env!("BUILD_DATE").unwrap_or("unknown"),
    })
    .to_string()
}

/// The object version key at `path`, or a per-process key (with a warning) if it cannot be
/// used: delivering secrets matters more than stable versions.
fn version_key(path: Option<&Path>) -> VersionKey {
    let Some(path) = path else {
        return VersionKey::ephemeral();
    };
    match VersionKey::load_or_create(path) {
        Ok(key) => key,
        Err(err) => {
            tracing::warn!(
                path = %path.display(),
                error = %err,
                "cannot use the object version key file; versions will change on restart"
            );
            VersionKey::ephemeral()
        }
    }
}

/// `--version-key-file`, else `default_name` next to the socket: a node-local directory that
/// the DaemonSet already keeps across restarts.
fn key_file_path(flag: Option<&Path>, socket: &Path, default_name: &str) -> PathBuf {
    match flag {
        Some(path) => path.to_owned(),
        None => socket.parent().unwrap_or(Path::new("/")).join(default_name),
    }
}

/// Where classes may name Vault TLS files: anywhere for `mount` (`kubelet_root` is `None`),
/// else only in `--vault-tls-allowed-dirs` and never below the kubelet root.
fn tls_policy(args: &VaultArgs, kubelet_root: Option<&Path>) -> TlsPolicy {
    let Some(root) = kubelet_root else {
        return TlsPolicy::default();
    };
    let canonical = |dir: &Path| dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    let allowed = args
        .vault_tls_allowed_dirs
        .iter()
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| canonical(dir))
        .collect();
    TlsPolicy {
        allowed_dirs: Some(allowed),
        forbidden_dirs: vec![root.to_owned(), canonical(root)],
    }
}

fn vault_provider(
    args: &VaultArgs,
    credentials: Credentials,
    version_key: VersionKey,
    tls_policy: TlsPolicy,
) -> VaultProvider {
    let operator = |path: &Option<PathBuf>| path.clone().map(TlsFile::operator);
    VaultProvider::new(vault::Settings {
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
        version_key,
    })
}

/// The `aws` provider; `kube` and `node_name` serve IRSA and the node region lookup, and
/// without a pod identity (`mount`) credentials come from the AWS environment.
fn aws_provider(
    args: &AwsArgs,
    kube: Option<kube::Client>,
    node_name: Option<String>,
    pod_identity: bool,
) -> AwsProvider {
    let source = if pod_identity {
        aws::auth::Source::Pod {
            pod_identity_endpoint: args.aws_pod_identity_endpoint.clone(),
            pod_identity_timeout: args.pod_identity_http_timeout,
        }
    } else {
        aws::auth::Source::DefaultChain
    };
    AwsProvider::new(
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
    )
}

fn registry(args: &ProviderArgs) -> Registry {
    Registry::new(RegistryConfig {
        socket_dirs: args.socket_dirs(),
        max_recv_msg_size: args.max_call_recv_msg_size,
    })
}

async fn run_node(args: NodeArgs) -> anyhow::Result<()> {
    if !args.metrics_backend.eq_ignore_ascii_case("prometheus") {
        bail!(
            "unsupported metrics backend {:?}: only prometheus is supported",
            args.metrics_backend
        );
    }
    if args.nodeid.is_empty() {
        bail!("--nodeid is required (the DaemonSet passes spec.nodeName through KUBE_NODE_NAME)");
    }
    if !mount::can_mount() {
        bail!(
            "the node plugin must run as root to mount tmpfs volumes (securityContext.privileged: true)"
        );
    }
    let client = kube_client(args.kubeconfig.as_deref()).await?;
    let socket = grpc::socket_path(&args.endpoint)?;
    let kubelet_root = KubeletRoot::new(&args.kubelet_root_dir).with_context(|| {
        format!(
            "--kubelet-root-dir {}: kubelet's root directory must be mounted into the driver",
            args.kubelet_root_dir.display()
        )
    })?;
    let key = version_key(Some(&key_file_path(
        args.version_key.version_key_file.as_deref(),
        &socket,
        "version.key",
    )));

    let mut providers = registry(&args.providers);
    for name in args.builtin_providers.iter().map(|n| n.trim()) {
        match name {
            "" => {}
            vault::NAME => {
                let vault = vault_provider(
                    &args.vault,
                    Credentials::PodToken,
                    key.clone(),
                    tls_policy(&args.vault, Some(kubelet_root.path())),
                );
                providers = providers.with_builtin(vault::NAME, Arc::new(vault));
                tracing::info!(default_address = %args.vault.vault_address, "built-in vault provider enabled");
            }
            aws::NAME => {
                let aws = aws_provider(
                    &args.aws,
                    Some(client.clone()),
                    Some(args.nodeid.clone()),
                    true,
                );
                providers = providers.with_builtin(aws::NAME, Arc::new(aws));
                tracing::info!(
                    region = args
                        .aws
                        .aws_region
                        .as_deref()
                        .unwrap_or("(from the node label)"),
                    endpoint = args.aws.aws_endpoint_url.as_deref().unwrap_or("(AWS)"),
                    "built-in aws provider enabled"
                );
            }
            "local" => {
                bail!("--builtin-providers: enable `local` with --local-provider-root DIR instead")
            }
            other => bail!(
                "--builtin-providers: {other:?} is not a built-in provider; the built-ins are: vault, aws"
            ),
        }
    }
    providers = match &args.local_provider_root {
        Some(root) => {
            let root = root
                .canonicalize()
                .with_context(|| format!("--local-provider-root {}", root.display()))?;
            tracing::info!(root = %root.display(), "built-in local provider enabled");
            providers.with_builtin("local", Arc::new(LocalProvider::jailed(root, key)))
        }
        None => providers.with_disabled(
            "local",
            "start the driver with --local-provider-root DIR to enable it",
        ),
    };

    if args.enable_pprof {
        tracing::warn!(
            port = args.pprof_port,
            "--enable-pprof is accepted for compatibility; no profiling endpoint is served"
        );
    }
    let providers = Arc::new(providers);
    let metrics = Arc::new(Metrics::new());
    let recorder = Arc::new(events::Recorder::new(client.clone(), &args.nodeid));
    let ctx = Arc::new(
        Context::new(
            Arc::new(KubeClasses::new(client.clone())),
            providers.clone(),
            Some(PodStatusWriter::new(client.clone(), &args.nodeid)),
            MountMode::Tmpfs(TmpfsOptions {
                size_bytes: args.providers.tmpfs_size,
            }),
            metrics.clone(),
            args.enable_secret_rotation
                .then_some(args.rotation_poll_interval),
        )
        .with_events(recorder.clone())
        .with_kubelet_root(kubelet_root.clone())
        .with_limits(
            args.providers.max_call_recv_msg_size,
            args.max_concurrent_fetches,
        ),
    );

    let shutdown = shutdown::on_signal().context("installing signal handlers")?;
    let sync = sync::Controller::new(
        client,
        sync::Settings {
            node_name: args.nodeid.clone(),
            driver_name: args.drivername.clone(),
            resync_interval: args.secret_sync_resync_interval,
            rollout_on_change: args.rollout_on_secret_change,
            kubelet_root,
        },
        recorder,
        metrics.clone(),
    );
    let sync_task = tokio::spawn(sync.run(shutdown.clone()));
    let metrics_addr = metrics::parse_addr(&args.metrics_addr)
        .with_context(|| format!("invalid --metrics-addr {:?}", args.metrics_addr))?;
    let listener = tokio::net::TcpListener::bind(metrics_addr)
        .await
        .with_context(|| format!("failed to listen on --metrics-addr {metrics_addr}"))?;
    let metrics_task = tokio::spawn(metrics::serve(listener, metrics, shutdown.clone()));
    if args.provider_health_check {
        tokio::spawn(health_check(
            providers,
            args.provider_health_check_interval,
            shutdown.clone(),
        ));
    }

    let listener = grpc::bind(&socket)?;
    let info = DriverInfo {
        name: args.drivername.clone(),
        version: VERSION.to_owned(),
        node_id: args.nodeid.clone(),
    };
    tracing::info!(
        endpoint = %socket.display(),
        node = %args.nodeid,
        driver = %args.drivername,
        metrics = %metrics_addr,
        rotation = args.enable_secret_rotation,
        "CSI node plugin listening"
    );
    csi::serve(listener, socket, info, ctx, shutdown.clone())
        .await
        .context("CSI server failed")?;
    shutdown.cancel();
    sync_task.await.context("secret sync task")?;
    metrics_task
        .await
        .context("metrics server task")?
        .context("metrics server failed")?;
    tracing::info!("shut down cleanly");
    Ok(())
}

/// Asks every connected plugin for its version each interval; logs only, as upstream.
async fn health_check(
    providers: Arc<Registry>,
    interval: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        for client in providers.external_clients() {
            match tokio::time::timeout(Duration::from_secs(5), client.version()).await {
                Ok(Ok((runtime, version))) => {
                    tracing::debug!(
                        provider = client.name(),
                        runtime,
                        version,
                        "provider health check passed"
                    );
                }
                Ok(Err(err)) => {
                    tracing::warn!(provider = client.name(), error = %err, "provider health check failed")
                }
                Err(_) => tracing::warn!(
                    provider = client.name(),
                    "provider health check timed out after 5s"
                ),
            }
        }
    }
}

async fn kube_client(kubeconfig: Option<&Path>) -> anyhow::Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &Default::default()).await?
        }
        None => kube::Config::infer()
            .await
            .context("no in-cluster config and no kubeconfig")?,
    };
    let mut config = config;
    config.headers.clear();
    Ok(kube::Client::try_from(config)?)
}

async fn run_mount(args: MountArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.class)
        .with_context(|| format!("reading {}", args.class.display()))?;
    let mut class =
        parse_class(&text).with_context(|| format!("reading {}", args.class.display()))?;
    // `--attribute` edits the class itself: the file is its author's, while a pod's volume
    // attributes may not override what a built-in provider reads.
    class
        .spec
        .parameters
        .extend(args.attributes.iter().cloned());
    let name = class.metadata.name.clone().unwrap_or_default();
    if name.is_empty() {
        bail!("{}: metadata.name is required", args.class.display());
    }
    let namespace = args
        .namespace
        .clone()
        .or(class.metadata.namespace.clone())
        .unwrap_or_else(|| "default".to_owned());
    let mut classes = StaticClasses::default();
    classes.insert(
        &namespace,
        &name,
        Class {
            spec: class.spec.clone(),
            annotations: class.metadata.annotations.clone().unwrap_or_default(),
        },
    );

    let base = args
        .class
        .parent()
        .map(Path::to_owned)
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("."));
    let key = version_key(args.version_key.version_key_file.as_deref());
    let credentials = mount_credentials(&args)?;
    let providers = registry(&args.providers)
        .with_builtin(
            "local",
            Arc::new(LocalProvider::unjailed(base, key.clone())),
        )
        .with_builtin(
            vault::NAME,
            Arc::new(vault_provider(
                &args.vault,
                credentials,
                key,
                tls_policy(&args.vault, None),
            )),
        )
        .with_builtin(
            aws::NAME,
            Arc::new(aws_provider(&args.aws, None, None, false)),
        );
    let tmpfs = mount::can_mount() && !args.plain_dir;
    let mode = if tmpfs {
        MountMode::Tmpfs(TmpfsOptions {
            size_bytes: args.providers.tmpfs_size,
        })
    } else {
        MountMode::PlainDir
    };
    let ctx = Context::new(
        Arc::new(classes),
        Arc::new(providers),
        None,
        mode,
        Arc::new(Metrics::new()),
        None,
    )
    .with_limits(
        args.providers.max_call_recv_msg_size,
        crate::limits::DEFAULT_CONCURRENT_FETCHES,
    );
    let target = std::path::absolute(&args.target)?;
    let request = mount_request(&args, &name, &namespace, target.clone());

    let published = publish::publish(&ctx, &request, Mode::Refresh)
        .await
        .map_err(|err| anyhow::anyhow!(csi_message(&err)))?;
    let backing = if tmpfs {
        "tmpfs"
    } else {
        "a plain directory (not root: files are on disk)"
    };
    println!(
        "mounted SecretProviderClass {namespace}/{name} (provider {}) at {} on {backing}",
        published.provider,
        target.display()
    );
    print_files(&published);
    if !args.watch {
        return Ok(());
    }

    let shutdown = shutdown::on_signal()?;
    let mut versions = published.versions;
    println!(
        "watching: re-fetching every {}",
        humantime::format_duration(args.rotation_poll_interval)
    );
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(args.rotation_poll_interval) => {}
        }
        match publish::publish(&ctx, &request, Mode::Refresh).await {
            Ok(published) => {
                report_changes(&versions, &published.versions);
                versions = published.versions;
            }
            Err(err) => eprintln!(
                "refresh failed, keeping the previous files: {}",
                csi_message(&err)
            ),
        }
    }
}

/// Vault credentials for `mount`: a token file, `VAULT_TOKEN`, or a JWT file, in that order.
fn mount_credentials(args: &MountArgs) -> anyhow::Result<Credentials> {
    if let Some(path) = &args.vault_token_file {
        let token = std::fs::read_to_string(path)
            .with_context(|| format!("reading --vault-token-file {}", path.display()))?;
        return Ok(Credentials::Token(crate::redact::Secret::new(
            token.trim().to_owned(),
        )));
    }
    if let Some(token) = std::env::var("VAULT_TOKEN").ok().filter(|t| !t.is_empty()) {
        return Ok(Credentials::Token(crate::redact::Secret::new(token)));
    }
    Ok(match &args.vault_jwt_file {
        Some(path) => Credentials::JwtFile(path.clone()),
        None => Credentials::Missing,
    })
}

/// `provider NAME --endpoint`: serves a built-in provider on a plugin socket until signalled.
async fn run_provider(args: ProviderServeArgs) -> anyhow::Result<()> {
    let socket = grpc::socket_path(&args.endpoint)?;
    let provider: Arc<dyn Provider> = match args.name.as_str() {
        vault::NAME => {
            let key = version_key(Some(&key_file_path(
                args.version_key.version_key_file.as_deref(),
                &socket,
                "vault.version.key",
            )));
            Arc::new(vault_provider(
                &args.vault,
                Credentials::PodToken,
                key,
                tls_policy(&args.vault, Some(&args.kubelet_root_dir)),
            ))
        }
        // AWS reports its own version ids and needs no key.
        aws::NAME => {
            let kube = match kube_client(args.kubeconfig.as_deref()).await {
                Ok(client) => Some(client),
                Err(err) => {
                    tracing::warn!(
                        error = %format!("{err:#}"),
                        "no Kubernetes API: IRSA and the node region lookup will fail; \
                         use Pod Identity and set AWS_REGION"
                    );
                    None
                }
            };
            Arc::new(aws_provider(&args.aws, kube, args.node_name.clone(), true))
        }
        other => bail!("{other:?} is not a built-in provider that can be served; use: vault, aws"),
    };
    let shutdown = shutdown::on_signal().context("installing signal handlers")?;
    let listener = grpc::bind(&socket)?;
    tracing::info!(provider = %args.name, endpoint = %socket.display(), "serving built-in provider");
    serve::serve(listener, socket, &args.name, VERSION, provider, shutdown)
        .await
        .context("provider server failed")?;
    tracing::info!("shut down cleanly");
    Ok(())
}

fn csi_message(err: &publish::PublishError) -> String {
    crate::error::full_message(err)
}

fn mount_request(args: &MountArgs, name: &str, namespace: &str, target: PathBuf) -> PublishRequest {
    let pod = PodInfo {
        name: args.pod_name.clone(),
        namespace: namespace.to_owned(),
        uid: "00000000-0000-0000-0000-000000000000".to_owned(),
        service_account: args.service_account.clone(),
    };
    let attributes: BTreeMap<String, String> = [
        (attr::CLASS_ATTRIBUTE, name),
        (attr::POD_NAME, &pod.name),
        (attr::POD_NAMESPACE, &pod.namespace),
        (attr::POD_UID, &pod.uid),
        (attr::SERVICE_ACCOUNT, &pod.service_account),
        ("csi.storage.k8s.io/ephemeral", "true"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    PublishRequest {
        volume_id: format!("mount-{name}"),
        target_path: target,
        class_name: name.to_owned(),
        pod,
        attributes,
        service_account_tokens: None,
        secrets: None,
        timeout: Some(Duration::from_secs(120)),
    }
}

/// The first SecretProviderClass document in a YAML file.
fn parse_class(text: &str) -> anyhow::Result<SecretProviderClass> {
    let mut documents = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        if line.trim_end() == "---" {
            documents.push(std::mem::take(&mut current));
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    documents.push(current);
    for document in documents.iter().filter(|d| !d.trim().is_empty()) {
        let value: serde_json::Value = serde_saphyr::from_str(document).context("invalid YAML")?;
        if value.get("kind").and_then(|k| k.as_str()) == Some("SecretProviderClass") {
            return serde_json::from_value(value).context("invalid SecretProviderClass");
        }
    }
    bail!("no document with kind: SecretProviderClass")
}

fn print_files(published: &Published) {
    let versions: BTreeMap<&str, &str> = published
        .versions
        .iter()
        .map(|v| (v.id.as_str(), v.version.as_str()))
        .collect();
    println!("  {:<32} {:>5} {:>9}  VERSION", "PATH", "MODE", "SIZE");
    for file in &published.files {
        let version = versions.get(file.path.as_str()).copied().unwrap_or("-");
        println!(
            "  {:<32} {:>5} {:>7} B  {version}",
            file.path,
            format!("{:04o}", file.mode),
            file.size
        );
    }
}

fn report_changes(before: &[ObjectVersion], after: &[ObjectVersion]) {
    let old: BTreeMap<&str, &str> = before
        .iter()
        .map(|v| (v.id.as_str(), v.version.as_str()))
        .collect();
    let new: BTreeMap<&str, &str> = after
        .iter()
        .map(|v| (v.id.as_str(), v.version.as_str()))
        .collect();
    let mut changes = 0;
    for (id, version) in &new {
        match old.get(id) {
            None => println!("added   {id} (version {version})"),
            Some(previous) if previous != version => {
                println!("changed {id} (version {previous} -> {version})")
            }
            Some(_) => continue,
        }
        changes += 1;
    }
    for id in old.keys().filter(|id| !new.contains_key(*id)) {
        println!("removed {id}");
        changes += 1;
    }
    if changes == 0 {
        println!("unchanged ({} objects)", new.len());
    }
}

fn run_crdgen(args: &CrdgenArgs) -> anyhow::Result<()> {
    let Some(dir) = &args.out_dir else {
        print!("{}", crate::crd::crds_yaml());
        return Ok(());
    };
    for (name, yaml) in crate::crd::crd_files() {
        let path = dir.join(name);
        std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

fn run_unmount(args: &UnmountArgs) -> anyhow::Result<()> {
    publish::remove_volume(&args.target)?;
    println!("removed {}", args.target.display());
    Ok(())
}
