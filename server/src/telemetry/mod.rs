//! Logging and metrics. `init` is called by the binary only: the library never installs a
//! global subscriber, so tests can run servers side by side.

pub mod access;
pub mod metrics;
pub mod otel;
pub mod stats;

use crate::cli::LogFormat;
use tracing_subscriber::EnvFilter;

/// Installs the global tracing subscriber: filter from `FERRY_LOG` (default `info`), and the
/// OpenTelemetry layer when `OTEL_EXPORTER_OTLP_*` asks for traces (see [`otel`]). Keep the
/// returned guard alive: dropping it flushes and stops the trace export.
pub fn init(format: LogFormat) -> anyhow::Result<TelemetryGuard> {
    init_with(format, "info", true)
}

/// Like `init`, with another default level when `FERRY_LOG` is not set (the `models`
/// commands print their results and log only warnings by default), and without traces.
pub fn init_with_default(format: LogFormat, default_level: &str) {
    let _ = init_with(format, default_level, false);
}

fn init_with(
    format: LogFormat,
    default_level: &str,
    traces: bool,
) -> anyhow::Result<TelemetryGuard> {
    use std::io::IsTerminal;
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter =
        EnvFilter::try_from_env("FERRY_LOG").unwrap_or_else(|_| EnvFilter::new(default_level));
    // Colours only for a person at a terminal: a file, a pipe or `kubectl logs` would get the
    // escape codes as text. NO_COLOR (no-color.org) turns them off there too.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let fmt = match format {
        LogFormat::Json => fmt.json().boxed(),
        LogFormat::Text => fmt.boxed(),
    };
    let provider = if traces {
        otel::provider_from_env()?
    } else {
        None
    };
    // Per-layer filters: FERRY_LOG decides what is logged; the trace layer takes ferry's spans
    // (requests at INFO, stages at DEBUG) whatever FERRY_LOG says, and nothing when off.
    let otel_layer = provider.as_ref().map(|p| {
        otel::layer(p).with_filter(tracing_subscriber::filter::filter_fn(|meta| {
            meta.is_span()
                && meta.target().starts_with("ferry")
                && *meta.level() <= tracing::Level::DEBUG
        }))
    });
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(otel_layer)
        .init();
    if provider.is_some() {
        tracing::info!("Exporting traces over OTLP (OTEL_EXPORTER_OTLP_* variables).");
    }
    Ok(TelemetryGuard { provider })
}

/// Flushes and stops the trace export when dropped.
pub struct TelemetryGuard {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}
