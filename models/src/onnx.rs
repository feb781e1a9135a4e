//! Loading ONNX Runtime's shared library, once per process, before any model loads.

use crate::config::ModelsConfig;
#[cfg(feature = "ort")]
use ferry_runtimes::OnnxEngine;

/// Decides where ONNX Runtime's library comes from and loads it; logs what happened.
/// Returns whether ONNX Runtime is usable.
pub fn init_onnx_runtime(config: &ModelsConfig) -> bool {
    #[cfg(feature = "ort")]
    {
        let wants_ort = config.onnx_engine == OnnxEngine::Ort
            || config
                .models
                .iter()
                .any(|m| m.onnx_engine == Some(OnnxEngine::Ort));
        use ferry_runtimes::ort_library;
        let candidates = ort_library::search(
            &ort_library::Request {
                explicit: config.onnxruntime_lib.as_deref(),
            },
            &ort_library::ProcessSurroundings,
        );
        let Some(found) = ort_library::find(&candidates) else {
            let searched: Vec<_> = candidates.iter().map(|c| c.path.display()).collect();
            if wants_ort {
                tracing::error!(searched = ?searched, "ONNX Runtime library not found; models configured for `onnx_engine: ort` will not load. Run `pip install onnxruntime` (in the active Python environment) or set FERRY_ORT_LIB to a libonnxruntime.so.");
            } else {
                tracing::info!(searched = ?searched, "ONNX Runtime library not found; ONNX models run on tract (pure Rust). `pip install onnxruntime` or FERRY_ORT_LIB enables ONNX Runtime.");
            }
            return false;
        };
        match ferry_runtimes::ort::init(&found.path) {
            Ok(()) => {
                tracing::info!(library = %found.path.display(), found_via = %found.origin, "ONNX Runtime loaded from {}.", found.origin);
                true
            }
            Err(e) => {
                tracing::warn!(library = %found.path.display(), found_via = %found.origin, error = %e, "ONNX Runtime could not be loaded; ONNX models run on tract unless they ask for ort.");
                false
            }
        }
    }
    #[cfg(not(feature = "ort"))]
    {
        let _ = config;
        tracing::info!(
            "This build has no ONNX Runtime engine (cargo feature `ort`); ONNX models run on tract."
        );
        false
    }
}
