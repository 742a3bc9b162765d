use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::external::ExternalProvider;
use super::{Provider, ProviderError, validate_name};
use crate::lock::lock;

/// How provider names are resolved on this node.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Plugin socket directories in search order (upstream: additional paths, then
    /// `--provider-volume`).
    pub socket_dirs: Vec<PathBuf>,
    /// Largest provider response accepted, in bytes.
    pub max_recv_msg_size: usize,
}

/// Resolves a SecretProviderClass's `provider` to something that can mount.
///
/// Built-in providers win over sockets of the same name; a built-in that is disabled on this
/// node falls through to the socket search and, failing that, says how to enable it.
#[derive(Debug)]
pub struct Registry {
    config: RegistryConfig,
    builtins: BTreeMap<String, Arc<dyn Provider>>,
    disabled: BTreeMap<String, String>,
    clients: Mutex<HashMap<PathBuf, Arc<ExternalProvider>>>,
}

impl Registry {
    /// A registry with no built-in providers.
    pub fn new(config: RegistryConfig) -> Self {
        Self {
            config,
            builtins: BTreeMap::new(),
            disabled: BTreeMap::new(),
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// Registers a built-in provider under `name`.
    pub fn with_builtin(mut self, name: &str, provider: Arc<dyn Provider>) -> Self {
        self.builtins.insert(name.to_owned(), provider);
        self
    }

    /// Records a built-in provider that is off on this node, with the hint to turn it on.
    pub fn with_disabled(mut self, name: &str, hint: &str) -> Self {
        self.disabled.insert(name.to_owned(), hint.to_owned());
        self
    }

    /// Tells every built-in provider that the volume at `target` is gone.
    pub async fn unpublished(&self, target: &Path) {
        for provider in self.builtins.values() {
            provider.unpublished(target).await;
        }
    }

    /// The provider for `name`, reusing one client per plugin socket.
    pub fn get(&self, name: &str) -> Result<Arc<dyn Provider>, ProviderError> {
        validate_name(name)?;
        if let Some(provider) = self.builtins.get(name) {
            return Ok(provider.clone());
        }
        let Some(socket) = self.find_socket(name) else {
            if let Some(hint) = self.disabled.get(name) {
                return Err(ProviderError::Disabled {
                    name: name.to_owned(),
                    hint: hint.clone(),
                });
            }
            let searched = self
                .config
                .socket_dirs
                .iter()
                .map(|dir| dir.display().to_string())
                .collect::<Vec<_>>()
                .join(", ");
            return Err(ProviderError::NotFound {
                name: name.to_owned(),
                searched,
            });
        };
        let mut clients = lock(&self.clients);
        let client = clients.entry(socket.clone()).or_insert_with(|| {
            Arc::new(ExternalProvider::new(
                name,
                socket,
                self.config.max_recv_msg_size,
            ))
        });
        Ok(client.clone())
    }

    /// The plugin clients created so far, for the health check.
    pub fn external_clients(&self) -> Vec<Arc<ExternalProvider>> {
        let clients = lock(&self.clients);
        clients.values().cloned().collect()
    }

    fn find_socket(&self, name: &str) -> Option<PathBuf> {
        self.config
            .socket_dirs
            .iter()
            .map(|dir| dir.join(format!("{name}.sock")))
            .find(|path| path.exists())
    }
}
