//! `mount`: one SecretProviderClass file fetched into a directory, without a cluster, through
//! the same pipeline as a pod's volume.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};

use super::builtin::{Builtins, Site};
use super::{registry, version_key};
use crate::class::{Class, StaticClasses};
use crate::cli::MountArgs;
use crate::crd::SecretProviderClass;
use crate::error::full_message;
use crate::metrics::Metrics;
use crate::pod::{CLASS_ATTRIBUTE, PodInfo};
use crate::provider::vault::auth::Credentials;
use crate::provider::{ObjectVersion, aws, azure, gcp, local, vault};
use crate::publish::{self, Context, Mode, PublishRequest, Published};
use crate::shutdown;
use crate::template;
use crate::volume::{MountMode, TmpfsOptions, mount};

/// Mounts the class once, or keeps refreshing it with `--watch`.
pub(super) async fn run_mount(args: MountArgs) -> anyhow::Result<()> {
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
            ..Default::default()
        },
    );

    let base = args
        .class
        .parent()
        .map(Path::to_owned)
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("."));
    let builtins = Builtins {
        vault: &args.vault,
        aws: &args.aws,
        gcp: &args.gcp,
        azure: &args.azure,
        key: version_key(args.version_key.version_key_file.as_deref()),
        site: Site::Mount {
            vault_credentials: mount_credentials(&args)?,
        },
    };
    let providers = registry(&args.providers)
        .with_builtin(local::NAME, builtins.local(base))
        .with_builtin(vault::NAME, builtins.vault())
        .with_builtin(aws::NAME, builtins.aws())
        .with_builtin(gcp::NAME, builtins.gcp())
        .with_builtin(azure::NAME, builtins.azure());
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
        Arc::new(Metrics::new()),
    )
    .with_mount_mode(mode)
    .with_limits(
        args.providers.max_call_recv_msg_size,
        crate::limits::DEFAULT_CONCURRENT_FETCHES,
    );
    let target = std::path::absolute(&args.target)?;
    let request = mount_request(&args, &name, &namespace, target.clone());

    let published = publish::publish(&ctx, &request, Mode::Refresh)
        .await
        .map_err(|err| anyhow::anyhow!(full_message(&err)))?;
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
                full_message(&err)
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

fn mount_request(args: &MountArgs, name: &str, namespace: &str, target: PathBuf) -> PublishRequest {
    let pod = PodInfo {
        name: args.pod_name.clone(),
        namespace: namespace.to_owned(),
        uid: "00000000-0000-0000-0000-000000000000".to_owned(),
        service_account: args.service_account.clone(),
    };
    // The identity travels typed in `pod`, as the pipeline hands it to providers.
    let attributes: BTreeMap<String, String> = [
        (CLASS_ATTRIBUTE, name),
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
        group: None,
    }
}

/// The first SecretProviderClass document in a YAML file.
fn parse_class(text: &str) -> anyhow::Result<SecretProviderClass> {
    let documents: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(text).context("invalid YAML")?;
    let class = documents
        .into_iter()
        .find(|document| {
            document.get("kind").and_then(|k| k.as_str()) == Some("SecretProviderClass")
        })
        .context("no document with kind: SecretProviderClass")?;
    serde_json::from_value(class).context("invalid SecretProviderClass")
}

fn print_files(published: &Published) {
    let versions: BTreeMap<&str, &str> = published
        .versions
        .iter()
        .map(|v| (v.id.as_str(), v.version.as_str()))
        .collect();
    println!("  {:<32} {:>5} {:>9}  VERSION", "PATH", "MODE", "SIZE");
    for file in &published.files {
        let templated = format!("{}{}", template::VERSION_PREFIX, file.path);
        let version = versions
            .get(file.path.as_str())
            .or_else(|| versions.get(templated.as_str()))
            .copied()
            .unwrap_or("-");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_class_is_found_among_other_documents() {
        let text = "---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {name: app}\n---\n\
                    apiVersion: secrets-store.csi.x-k8s.io/v1\nkind: SecretProviderClass\n\
                    metadata: {name: quickstart}\nspec:\n  provider: local\n---\n";
        let class = parse_class(text).unwrap();
        assert_eq!(class.metadata.name.as_deref(), Some("quickstart"));
        assert_eq!(class.spec.provider, "local");
        let error = parse_class("kind: ServiceAccount\n").unwrap_err();
        assert!(format!("{error:#}").contains("no document with kind: SecretProviderClass"));
        assert!(parse_class("a: [\n").is_err());
    }
}
