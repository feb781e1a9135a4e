//! The access log: one structured line per HTTP request (target `ferry::access`, JSON with
//! `--log-format json`), with what an operator greps for — method, path, status, latency,
//! bytes, request and trace ids, the model and version or the endpoint and variant that
//! answered, and the client address.
//!
//! Under load it is sampled so that it cannot become the bottleneck: up to
//! `access_log.max_lines_per_second` lines a second are written; beyond that only server
//! errors (5xx) are, and the lines skipped are counted in `ferry_access_log_lines_total`
//! `{outcome="skipped"}`.

use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};

/// `access_log` in ferry.yaml.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogConfig {
    /// One line per request; `false` turns the access log off.
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// Lines written per second before sampling starts (5xx answers are always written).
    #[serde(default = "default_max_lines_per_second")]
    pub max_lines_per_second: u64,
}

fn default_enabled() -> bool {
    true
}

fn default_max_lines_per_second() -> u64 {
    1000
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        AccessLogConfig {
            enabled: default_enabled(),
            max_lines_per_second: default_max_lines_per_second(),
        }
    }
}

/// What the handlers learned about a request that the access line reports.
#[derive(Debug, Default)]
pub struct Labels {
    pub model: Option<String>,
    pub version: Option<String>,
    pub endpoint: Option<String>,
    pub variant: Option<String>,
}

tokio::task_local! {
    /// Set around each HTTP request by the observing middleware; the handler runs in the same
    /// task, so it can fill in the labels without threading them through every return type.
    pub(crate) static LABELS: RefCell<Labels>;
}

/// Records the model version that answered (no-op outside a request, e.g. on gRPC).
pub fn record_model(model: &str, version: &str) {
    let _ = LABELS.try_with(|l| {
        let mut l = l.borrow_mut();
        l.model = Some(model.to_string());
        l.version = Some(version.to_string());
    });
}

/// Records the endpoint and, when the whole request went to one, its variant.
pub fn record_endpoint(endpoint: &str, variant: Option<&str>) {
    let _ = LABELS.try_with(|l| {
        let mut l = l.borrow_mut();
        l.endpoint = Some(endpoint.to_string());
        l.variant = variant.map(str::to_string);
    });
}

/// The per-second line budget.
#[derive(Debug)]
pub struct Sampler {
    max_per_second: u64,
    /// `second << 32 | lines written in that second`: one atomic word, no lock.
    window: AtomicU64,
}

impl Sampler {
    pub fn new(max_per_second: u64) -> Sampler {
        Sampler {
            max_per_second,
            window: AtomicU64::new(0),
        }
    }

    /// Whether a line for a response with `status` is written now (`now_s`: unix seconds).
    pub fn admit(&self, now_s: u64, status: u16) -> bool {
        if status >= 500 {
            return true;
        }
        let second = now_s & 0xffff_ffff;
        let mut current = self.window.load(Ordering::Relaxed);
        loop {
            let (s, n) = (current >> 32, current & 0xffff_ffff);
            let next = if s == second {
                if n >= self.max_per_second {
                    return false;
                }
                current + 1
            } else {
                (second << 32) | 1
            };
            match self.window.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(seen) => current = seen,
            }
        }
    }
}

impl Sampler {
    /// [`Sampler::admit`] at the current second, counting the outcome in `lines`
    /// (`ferry_access_log_lines_total{outcome="written"|"skipped"}`).
    pub fn admit_now(&self, status: u16, lines: &super::metrics::AccessLogLines) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let admitted = self.admit(now, status);
        if admitted {
            lines.written.inc();
        } else {
            lines.skipped.inc();
        }
        admitted
    }
}

/// Runs `work` with a labels slot for the handlers to fill when `on` (the access log is
/// enabled); the hot path pays nothing for it otherwise.
pub async fn labelled<T>(on: bool, work: impl std::future::Future<Output = T>) -> (T, Labels) {
    if !on {
        return (work.await, Labels::default());
    }
    LABELS
        .scope(Default::default(), async {
            let out = work.await;
            (out, LABELS.with(|l| l.take()))
        })
        .await
}

/// W3C trace context header: its trace id goes into the access log.
pub const TRACEPARENT: &str = "traceparent";

/// The trace id an access line reports: the exported trace's when traces are on (the
/// caller's, continued, or a new one), else the caller's `traceparent` as sent.
pub fn trace_id(span: &tracing::Span, headers: &axum::http::HeaderMap) -> Option<String> {
    if super::otel::enabled() {
        return super::otel::trace_id(span);
    }
    trace_id_of(headers.get(TRACEPARENT).and_then(|v| v.to_str().ok())).map(str::to_string)
}

/// The trace id of a W3C `traceparent` header (`00-<32 hex>-<16 hex>-<2 hex>`), if valid.
pub fn trace_id_of(traceparent: Option<&str>) -> Option<&str> {
    let mut parts = traceparent?.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(version, 2)
        && hex(trace, 32)
        && hex(span, 16)
        && hex(flags, 2)
        && trace.bytes().any(|b| b != b'0'))
    .then_some(trace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampler_admits_the_budget_per_second_and_every_server_error() {
        let s = Sampler::new(3);
        let admitted = (0..10).filter(|_| s.admit(100, 200)).count();
        assert_eq!(admitted, 3);
        assert!(s.admit(100, 503), "5xx lines are never skipped");
        assert!(!s.admit(100, 429));
        assert!(s.admit(101, 200), "a new second has a new budget");
    }

    #[test]
    fn trace_ids_come_only_from_valid_traceparents() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            trace_id_of(Some(tp)),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(trace_id_of(Some("00-xyz-00f067aa0ba902b7-01")), None);
        assert_eq!(
            trace_id_of(Some(
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01"
            )),
            None
        );
        assert_eq!(trace_id_of(None), None);
    }
}
