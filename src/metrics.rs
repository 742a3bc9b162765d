//! Prometheus metrics with the upstream driver's names and labels, so existing dashboards and
//! alerts keep working, served on `--metrics-addr`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::limits::{MAX_LABEL_LEN, MAX_LABEL_VALUES};
use crate::lock::lock;

/// `os_type` as upstream reports it (Go's `runtime.GOOS`).
const OS_TYPE: &str = std::env::consts::OS;

/// Labels `provider`, `os_type`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderLabels {
    provider: String,
    os_type: String,
}

/// Labels `provider`, `error_type`, `os_type`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderErrorLabels {
    provider: String,
    error_type: String,
    os_type: String,
}

/// Label `os_type`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OsLabels {
    os_type: String,
}

/// Labels `provider`, `os_type`, `rotated`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RotationLabels {
    provider: String,
    os_type: String,
    rotated: String,
}

/// Labels `provider`, `error_type`, `os_type`, `rotated`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RotationErrorLabels {
    provider: String,
    error_type: String,
    os_type: String,
    rotated: String,
}

/// Every metric the driver records.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    node_publish: Family<ProviderLabels, Counter>,
    node_publish_error: Family<ProviderErrorLabels, Counter>,
    node_unpublish: Family<OsLabels, Counter>,
    node_unpublish_error: Family<OsLabels, Counter>,
    rotation_reconcile: Family<RotationLabels, Counter>,
    rotation_reconcile_error: Family<RotationErrorLabels, Counter>,
    rotation_reconcile_duration: Family<OsLabels, Histogram>,
    publish_duration: Family<ProviderLabels, Histogram>,
    sync_secret: Family<ProviderLabels, Counter>,
    sync_secret_error: Family<SyncErrorLabels, Counter>,
    sync_secret_duration: Family<OsLabels, Histogram>,
    providers: LabelValues,
    error_types: LabelValues,
}

/// The values one label has taken. Provider names come from classes and error types from
/// plugins, so only the first `MAX_LABEL_VALUES` distinct values (cut to `MAX_LABEL_LEN`
/// characters of `[A-Za-z0-9_.:/-]`) get series of their own; later ones count as `other`.
#[derive(Debug, Default)]
struct LabelValues(Mutex<BTreeSet<String>>);

impl LabelValues {
    fn bound(&self, value: &str) -> String {
        let clean: String = value
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || "_.:/-".contains(*c))
            .take(MAX_LABEL_LEN)
            .collect();
        let mut seen = lock(&self.0);
        if seen.contains(&clean) || seen.len() < MAX_LABEL_VALUES {
            seen.insert(clean.clone());
            clean
        } else {
            "other".to_owned()
        }
    }
}

/// Labels `error_type`, `os_type`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SyncErrorLabels {
    error_type: String,
    os_type: String,
}

/// Upstream's `ExponentialBucketsRange(0.1, 2, 11)`.
fn rotation_buckets() -> impl Iterator<Item = f64> {
    (0..11).map(|i| 0.1 * 20f64.powf(f64::from(i) / 10.0))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(ProcessCollector));
        let node_publish = Family::default();
        let node_publish_error = Family::default();
        let node_unpublish = Family::default();
        let node_unpublish_error = Family::default();
        let rotation_reconcile = Family::default();
        let rotation_reconcile_error = Family::default();
        let rotation_reconcile_duration =
            Family::<OsLabels, Histogram>::new_with_constructor(|| {
                Histogram::new(rotation_buckets())
            });
        let publish_duration = Family::<ProviderLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.001, 2.0, 16,
            ))
        });
        registry.register(
            "node_publish",
            "Successful NodePublishVolume calls",
            node_publish.clone(),
        );
        registry.register(
            "node_publish_error",
            "Failed NodePublishVolume calls",
            node_publish_error.clone(),
        );
        registry.register(
            "node_unpublish",
            "Successful NodeUnpublishVolume calls",
            node_unpublish.clone(),
        );
        registry.register(
            "node_unpublish_error",
            "Failed NodeUnpublishVolume calls",
            node_unpublish_error.clone(),
        );
        registry.register(
            "rotation_reconcile",
            "Successful rotations of mounted volumes",
            rotation_reconcile.clone(),
        );
        registry.register(
            "rotation_reconcile_error",
            "Failed rotations of mounted volumes",
            rotation_reconcile_error.clone(),
        );
        registry.register(
            "rotation_reconcile_duration_sec",
            "Duration of rotations of mounted volumes in seconds",
            rotation_reconcile_duration.clone(),
        );
        let sync_secret = Family::default();
        let sync_secret_error = Family::default();
        let sync_secret_duration = Family::<OsLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(rotation_buckets())
        });
        registry.register(
            "sync_k8s_secret",
            "Kubernetes Secrets created or updated from mounted files",
            sync_secret.clone(),
        );
        registry.register(
            "sync_k8s_secret_error",
            "secretObjects entries that could not be synced",
            sync_secret_error.clone(),
        );
        registry.register(
            "k8s_secret_duration_sec",
            "Duration of syncing one pod volume's secretObjects, in seconds",
            sync_secret_duration.clone(),
        );
        registry.register(
            "node_publish_duration_seconds",
            "Duration of NodePublishVolume calls that fetched from a provider, in seconds",
            publish_duration.clone(),
        );
        Self {
            registry,
            node_publish,
            node_publish_error,
            node_unpublish,
            node_unpublish_error,
            rotation_reconcile,
            rotation_reconcile_error,
            rotation_reconcile_duration,
            publish_duration,
            sync_secret,
            sync_secret_error,
            sync_secret_duration,
            providers: LabelValues::default(),
            error_types: LabelValues::default(),
        }
    }

    fn provider_labels(&self, provider: &str) -> ProviderLabels {
        ProviderLabels {
            provider: self.providers.bound(provider),
            os_type: OS_TYPE.to_owned(),
        }
    }

    /// A synced Secret was created or changed.
    pub fn secret_synced(&self, provider: &str) {
        self.sync_secret
            .get_or_create(&self.provider_labels(provider))
            .inc();
    }

    /// A `secretObjects` entry failed; `error_type` is a short CamelCase cause.
    pub fn secret_sync_error(&self, error_type: &str) {
        self.sync_secret_error
            .get_or_create(&SyncErrorLabels {
                error_type: self.error_types.bound(error_type),
                os_type: OS_TYPE.to_owned(),
            })
            .inc();
    }

    /// One pod volume's `secretObjects` were reconciled.
    pub fn secret_sync_duration(&self, elapsed: Duration) {
        self.sync_secret_duration
            .get_or_create(&OsLabels {
                os_type: OS_TYPE.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// A NodePublishVolume succeeded (including idempotent and skipped calls, as upstream).
    pub fn publish_ok(&self, provider: &str) {
        self.node_publish
            .get_or_create(&self.provider_labels(provider))
            .inc();
    }

    /// A NodePublishVolume failed, or a rotation failure was masked.
    pub fn publish_error(&self, provider: &str, error_type: &str) {
        let labels = ProviderErrorLabels {
            provider: self.providers.bound(provider),
            error_type: self.error_types.bound(error_type),
            os_type: OS_TYPE.to_owned(),
        };
        self.node_publish_error.get_or_create(&labels).inc();
    }

    /// How long a fetch from a provider and write took.
    pub fn publish_duration(&self, provider: &str, elapsed: Duration) {
        self.publish_duration
            .get_or_create(&self.provider_labels(provider))
            .observe(elapsed.as_secs_f64());
    }

    /// A NodeUnpublishVolume finished.
    pub fn unpublish(&self, ok: bool) {
        let family = if ok {
            &self.node_unpublish
        } else {
            &self.node_unpublish_error
        };
        family
            .get_or_create(&OsLabels {
                os_type: OS_TYPE.to_owned(),
            })
            .inc();
    }

    /// A rotation of a mounted volume succeeded.
    pub fn rotation_ok(&self, provider: &str, elapsed: Duration) {
        let labels = RotationLabels {
            provider: self.providers.bound(provider),
            os_type: OS_TYPE.to_owned(),
            rotated: "true".to_owned(),
        };
        self.rotation_reconcile.get_or_create(&labels).inc();
        self.rotation_reconcile_duration
            .get_or_create(&OsLabels {
                os_type: OS_TYPE.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// A rotation of a mounted volume failed; the old files stay.
    pub fn rotation_error(&self, provider: &str, error_type: &str) {
        let labels = RotationErrorLabels {
            provider: self.providers.bound(provider),
            error_type: self.error_types.bound(error_type),
            os_type: OS_TYPE.to_owned(),
            rotated: "true".to_owned(),
        };
        self.rotation_reconcile_error.get_or_create(&labels).inc();
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The `process_*` metrics every Go binary of upstream exposes (client_golang's process
/// collector), read from `/proc/self` at each scrape, so memory and CPU dashboards keep working.
#[derive(Debug)]
struct ProcessCollector;

/// What `/proc/self` tells at one scrape.
#[derive(Debug, Default, PartialEq)]
struct ProcessStats {
    cpu_seconds: f64,
    start_time_seconds: f64,
    virtual_memory_bytes: u64,
    resident_memory_bytes: u64,
    open_fds: u64,
    max_fds: Option<u64>,
}

impl ProcessStats {
    fn read() -> Option<Self> {
        use nix::unistd::{SysconfVar, sysconf};
        let tick = sysconf(SysconfVar::CLK_TCK).ok().flatten()? as f64;
        let page = sysconf(SysconfVar::PAGE_SIZE).ok().flatten()? as u64;
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let boot = std::fs::read_to_string("/proc/stat").ok()?;
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
        Self::parse(&stat, &boot, &limits, tick, page, open_fds)
    }

    fn parse(
        stat: &str,
        boot: &str,
        limits: &str,
        tick: f64,
        page: u64,
        open_fds: u64,
    ) -> Option<Self> {
        // Fields after the command name, which is in parentheses and may hold spaces.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
        let boot_time = boot
            .lines()
            .find_map(|line| line.strip_prefix("btime "))?
            .trim()
            .parse::<u64>()
            .ok()?;
        let max_fds = limits
            .lines()
            .find(|line| line.starts_with("Max open files"))
            .and_then(|line| line.split_whitespace().nth(3)?.parse().ok());
        Some(Self {
            cpu_seconds: (field(14)? + field(15)?) as f64 / tick,
            start_time_seconds: boot_time as f64 + field(22)? as f64 / tick,
            virtual_memory_bytes: field(23)?,
            resident_memory_bytes: field(24)?.saturating_mul(page),
            open_fds,
            max_fds,
        })
    }
}

impl prometheus_client::collector::Collector for ProcessCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        let Some(stats) = ProcessStats::read() else {
            return Ok(());
        };
        let cpu = ConstCounter::new(stats.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds.",
            None,
            cpu.metric_type(),
        )?)?;
        let mut gauges = vec![
            (
                "process_open_fds",
                "Number of open file descriptors.",
                stats.open_fds as f64,
            ),
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                stats.resident_memory_bytes as f64,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                stats.virtual_memory_bytes as f64,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                stats.start_time_seconds,
            ),
        ];
        if let Some(max) = stats.max_fds {
            gauges.push((
                "process_max_fds",
                "Maximum number of open file descriptors.",
                max as f64,
            ));
        }
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

/// Parses a Go-style listen address: `:8095` means every interface.
pub fn parse_addr(addr: &str) -> Result<SocketAddr, std::net::AddrParseError> {
    match addr.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}").parse(),
        None => addr.parse(),
    }
}

/// Serves `/metrics` (and `/healthz`) until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(exposition))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(metrics);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

async fn exposition(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.encode(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_upstream_names_and_labels() {
        let metrics = Metrics::new();
        metrics.publish_ok("vault");
        metrics.publish_error("vault", "FileWriteError");
        metrics.unpublish(true);
        metrics.rotation_ok("vault", Duration::from_millis(150));
        let text = metrics.encode();
        for expected in [
            "node_publish_total{provider=\"vault\",os_type=\"linux\"} 1",
            "node_publish_error_total{provider=\"vault\",error_type=\"FileWriteError\",os_type=\"linux\"} 1",
            "node_unpublish_total{os_type=\"linux\"} 1",
            "rotation_reconcile_total{provider=\"vault\",os_type=\"linux\",rotated=\"true\"} 1",
            "rotation_reconcile_duration_sec_bucket{le=\"0.1\",os_type=\"linux\"} 0",
        ] {
            assert!(text.contains(expected), "missing {expected} in\n{text}");
        }
    }

    #[test]
    fn a_fresh_driver_exposes_process_metrics_as_go_binaries_do() {
        let text = Metrics::new().encode();
        for name in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_virtual_memory_bytes ",
            "process_open_fds ",
            "process_max_fds ",
            "process_start_time_seconds ",
        ] {
            assert!(
                text.contains(&format!("\n{name}")),
                "missing {name} in\n{text}"
            );
        }
        let resident = text
            .lines()
            .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap();
        assert!(resident > 1e6, "{resident}");

        let stat = "42 (a) b) c) S 1 42 42 0 -1 4194560 1 0 0 0 250 50 0 0 20 0 9 0 1000 \
                    123456 789 18446744073709551615";
        let limits = "Limit Soft Limit Hard Limit Units\nMax open files 1024 4096 files\n";
        let stats = ProcessStats::parse(stat, "cpu 1\nbtime 1700000000\n", limits, 100.0, 4096, 7);
        assert_eq!(
            stats,
            Some(ProcessStats {
                cpu_seconds: 3.0,
                start_time_seconds: 1_700_000_010.0,
                virtual_memory_bytes: 123_456,
                resident_memory_bytes: 789 * 4096,
                open_fds: 7,
                max_fds: Some(1024),
            })
        );
    }

    #[test]
    fn label_values_from_outside_are_bounded() {
        let metrics = Metrics::new();
        for i in 0..1000 {
            metrics.publish_error(&format!("provider-{i}"), &format!("Code{i}\n{{evil}}"));
        }
        metrics.publish_error("provider-0", "Code0");
        let text = metrics.encode();
        let providers: BTreeSet<&str> = text
            .lines()
            .filter(|l| l.starts_with("node_publish_error_total{"))
            .filter_map(|l| l.split('"').nth(1))
            .collect();
        assert_eq!(providers.len(), MAX_LABEL_VALUES + 1, "{text}");
        assert!(text.contains("provider=\"other\""), "{text}");
        assert!(!text.contains("evil}"), "{text}");
        assert!(
            text.contains("provider=\"provider-0\",error_type=\"Code0evil\""),
            "{text}"
        );
    }

    #[test]
    fn buckets_match_upstream() {
        let buckets: Vec<f64> = rotation_buckets().collect();
        assert_eq!(buckets.len(), 11);
        assert!((buckets[0] - 0.1).abs() < 1e-9 && (buckets[10] - 2.0).abs() < 1e-9);
        assert!((buckets[1] - 0.1349).abs() < 1e-3);
    }

    #[test]
    fn go_style_addresses_listen_everywhere() {
        assert_eq!(parse_addr(":8095").unwrap().to_string(), "0.0.0.0:8095");
        assert_eq!(
            parse_addr("127.0.0.1:9").unwrap().to_string(),
            "127.0.0.1:9"
        );
    }
}
