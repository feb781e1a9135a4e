//! Logging and metrics. `init` is called by the binary only: the library never installs a
//! global subscriber, so tests can run servers side by side.

pub mod access;
pub mod metrics;
pub mod stats;

use crate::cli::LogFormat;
use tracing_subscriber::EnvFilter;

/// Installs the global tracing subscriber: filter from `FERRY_LOG` (default `info`).
pub fn init(format: LogFormat) {
    init_with_default(format, "info");
}

/// Like `init`, with another default level when `FERRY_LOG` is not set (the `models`
/// commands print their results and log only warnings by default).
pub fn init_with_default(format: LogFormat, default_level: &str) {
    let filter =
        EnvFilter::try_from_env("FERRY_LOG").unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
