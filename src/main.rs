//! `secrets-store-csi-driver`: parses the command line and hands over to [`app::run`].

use std::process::ExitCode;

use secrets_store_csi_driver::{app, cli, telemetry};

fn main() -> ExitCode {
    let cli = cli::parse();
    if cli.version {
        println!("{}", app::version_json());
        return ExitCode::SUCCESS;
    }
    telemetry::init(cli.log.log_format_json, cli.log.verbosity);
    if !cli.ignored_klog_flags.is_empty() {
        tracing::warn!(
            flags = %cli.ignored_klog_flags.join(" "),
            "ignoring klog flags of the upstream driver; logs go to stderr, -v sets verbosity"
        );
    }
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(app::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
