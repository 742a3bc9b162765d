//! Structured logs to stderr, as text or JSON lines.

use tracing_subscriber::EnvFilter;

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
    let filter =
        capped(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default)));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init();
    } else {
        builder.with_target(false).init();
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

fn capped(mut filter: EnvFilter) -> EnvFilter {
    for target in BODY_LOGGERS {
        if let Ok(directive) = format!("{target}=debug").parse() {
            filter = filter.add_directive(directive);
        }
    }
    filter
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_cannot_turn_on_body_logging() {
        let filter = capped(EnvFilter::new("trace,aws_smithy_runtime=trace")).to_string();
        assert!(filter.contains("aws_smithy_runtime=debug"), "{filter}");
        assert!(!filter.contains("aws_smithy_runtime=trace"), "{filter}");
        assert!(filter.contains("aws_sigv4=debug"), "{filter}");
    }
}
