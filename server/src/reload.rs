//! Endpoint hot reload: on SIGHUP, and when the config file's content changes (checked every
//! few seconds, which also catches Kubernetes ConfigMap updates that swap a symlink), the
//! `endpoints` section is re-read and swapped in without a restart. Other sections need a
//! restart; a change to them is logged and ignored. A config that fails to parse or validate
//! changes nothing.

use crate::config::ServerConfig;
use ferry_pipeline::Pipeline;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How often the config file is checked for changes.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(2);

fn digest(path: &Path) -> Option<[u8; 32]> {
    std::fs::read(path).ok().map(|b| Sha256::digest(&b).into())
}

/// Re-reads `path` and swaps in its endpoints. Returns what changed, or why nothing did.
pub async fn reload_endpoints(
    path: &Path,
    pipeline: &Pipeline,
) -> Result<ferry_pipeline::ReloadSummary, String> {
    let config = ServerConfig::load(path).map_err(|e| e.0)?;
    pipeline.reload(&config.endpoints).await
}

pub async fn watch(path: PathBuf, pipeline: Arc<Pipeline>) {
    #[cfg(unix)]
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "Could not listen for SIGHUP; config reload follows file changes only.");
            None
        }
    };
    let mut last = digest(&path);
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        #[cfg(unix)]
        let signalled = async {
            match hangup.as_mut() {
                Some(s) => s.recv().await.is_some(),
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let signalled = std::future::pending::<bool>();
        let trigger = tokio::select! {
            _ = tick.tick() => {
                let now = digest(&path);
                if now == last || now.is_none() {
                    continue;
                }
                last = now;
                "file change"
            }
            true = signalled => {
                last = digest(&path);
                "SIGHUP"
            }
        };
        match reload_endpoints(&path, &pipeline).await {
            Ok(summary) => tracing::info!(
                trigger,
                config = %path.display(),
                added = ?summary.added,
                changed = ?summary.changed,
                removed = ?summary.removed,
                "Reloaded endpoints."
            ),
            Err(e) => tracing::error!(
                trigger,
                config = %path.display(),
                error = %e,
                "Config reload failed; the endpoints keep their previous configuration."
            ),
        }
    }
}
