//! Structured logs to stderr, as text or JSON lines.

use tracing::{Level, Metadata};
use tracing_subscriber::filter::{FilterExt as _, FilterFn};
use tracing_subscriber::layer::{Filter, SubscriberExt as _};
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

/// Installs the global subscriber. `RUST_LOG` overrides the verbosity.
pub fn init(json: bool, verbosity: u8) {
    let level = match verbosity {
        0..=2 => "info",
        3..=4 => "debug",
        _ => "trace",
    };
    // Dependencies stay at info: their debug output is noise for operators. The watcher's own
    // warnings repeat on every retry; the driver logs watch failures itself, once and with
    // what to do.
    let default = format!("info,kube_runtime::watcher=error,secrets_store_csi_driver={level}");
    let env = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let registry = tracing_subscriber::registry();
    if json {
        let layer = tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .with_filter(capped(env));
        registry.with(layer).init();
    } else {
        // Colours only for a person at a terminal, never in a container's log file.
        let layer = tracing_subscriber::fmt::layer()
            .with_target(false)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .with_filter(capped(env));
        registry.with(layer).init();
    }
}

/// Crates whose trace output holds requests and responses (with the SDK's
/// `LOG_SENSITIVE_BODIES`, secret values): never below debug, whatever `RUST_LOG` asks for.
const BODY_LOGGERS: &[&str] = &[
    "aws_config",
    "aws_runtime",
    "aws_sdk_secretsmanager",
    "aws_sdk_ssm",
    "aws_sdk_sts",
    "aws_sigv4",
    "aws_smithy_http_client",
    "aws_smithy_runtime",
    "aws_smithy_runtime_api",
    "h2",
    "hyper",
    "hyper_util",
];

fn is_body_logger(target: &str) -> bool {
    let krate = target.split("::").next().unwrap_or_default();
    BODY_LOGGERS.contains(&krate)
}

/// `env`, minus the trace events of [`BODY_LOGGERS`]: a cap that only ever removes events,
/// so it cannot turn a crate's debug output on at a quieter verbosity.
fn capped<S>(env: EnvFilter) -> impl Filter<S> + Send + Sync + 'static
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let cap = FilterFn::new(|meta: &Metadata<'_>| {
        !(*meta.level() == Level::TRACE && is_body_logger(meta.target()))
    });
    env.and(cap)
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().write(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn logged(directives: &str) -> String {
        let captured = Captured::default();
        let sink = captured.clone();
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(move || sink.clone())
            .with_filter(capped(EnvFilter::new(directives)));
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            tracing::trace!(target: "hyper::proto", "hyper-trace");
            tracing::debug!(target: "hyper::proto", "hyper-debug");
            tracing::trace!(target: "aws_smithy_runtime::client", "aws-trace");
            tracing::trace!(target: "secrets_store_csi_driver::x", "own-trace");
            tracing::error!(target: "secrets_store_csi_driver::x", "own-error");
        });
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let _ = std::io::stderr().flush();
        text
    }

    #[test]
    fn the_cap_never_turns_output_on_and_always_drops_body_traces() {
        let quiet = logged("error");
        assert!(quiet.contains("own-error"), "{quiet}");
        assert!(!quiet.contains("hyper-debug"), "{quiet}");
        let loud = logged("trace,aws_smithy_runtime=trace");
        assert!(
            loud.contains("hyper-debug") && loud.contains("own-trace"),
            "{loud}"
        );
        assert!(
            !loud.contains("hyper-trace") && !loud.contains("aws-trace"),
            "{loud}"
        );
    }
}
