//! Logging and metrics. `init` is called by the binary only: the library never installs a
//! global subscriber, so tests can run servers side by side.

pub mod metrics;

use crate::cli::LogFormat;
use tracing_subscriber::EnvFilter;

/// Installs the global tracing subscriber: filter from `FERRY_LOG` (default `info`).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_env("FERRY_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
