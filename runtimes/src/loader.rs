use crate::{Device, Runtime, RuntimeError, Signature, TreeFormat, TreeModelInfo};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;

/// Which engine runs ONNX models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnnxEngine {
    /// The trees engine for tree-ensemble graphs it takes; for the rest ONNX Runtime when its
    /// library loaded, else tract.
    #[default]
    Auto,
    Ort,
    Tract,
    /// The trees engine; a graph that is not a tree ensemble it takes is refused.
    Trees,
}

/// How to load one model version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOptions {
    pub onnx_engine: OnnxEngine,
    /// Threads one inference may use inside the engine (ONNX Runtime's intra-op pool).
    pub intra_op_threads: usize,
    /// Whether idle ONNX Runtime intra-op threads spin; spinning trades CPU for latency.
    pub intra_op_spinning: bool,
    /// ONNX Runtime sessions to create (each holds a copy of the weights); tract shares one plan.
    pub sessions: usize,
    /// Where the model runs (Candle only; ONNX engines run on the CPU).
    pub device: Device,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            onnx_engine: OnnxEngine::Auto,
            intra_op_threads: 1,
            intra_op_spinning: false,
            sessions: 1,
            device: Device::Cpu,
        }
    }
}

/// Loads an ONNX model with the engine `options` select, and checks it against `signature`.
pub fn load_onnx(
    path: &Path,
    signature: &Signature,
    options: &LoadOptions,
) -> Result<Arc<dyn Runtime>, RuntimeError> {
    match options.onnx_engine {
        OnnxEngine::Ort => load_ort(path, signature, options),
        OnnxEngine::Tract => load_tract(path, signature, options),
        OnnxEngine::Trees => load_onnx_trees(path, signature, options),
        OnnxEngine::Auto => {
            #[cfg(all(feature = "trees", feature = "tract"))]
            match load_onnx_trees(path, signature, options) {
                Ok(runtime) => return Ok(runtime),
                Err(reason) => tracing::debug!(
                    path = %path.display(),
                    reason = %reason,
                    "Not serving this ONNX model on the trees engine."
                ),
            }
            #[cfg(feature = "ort")]
            if crate::ort::is_available() {
                return load_ort(path, signature, options);
            }
            load_tract(path, signature, options).map_err(|e| match e {
                RuntimeError::UnsupportedOperator {
                    engine, operator, ..
                } => RuntimeError::UnsupportedOperator {
                    engine,
                    operator,
                    hint: "ONNX Runtime would run it, but its library is not loaded: install the \
                           onnxruntime wheel and point FERRY_ORT_LIB at its libonnxruntime.so"
                        .into(),
                },
                other => other,
            })
        }
    }
}

fn load_onnx_trees(
    path: &Path,
    signature: &Signature,
    options: &LoadOptions,
) -> Result<Arc<dyn Runtime>, RuntimeError> {
    #[cfg(all(feature = "trees", feature = "tract"))]
    {
        Ok(Arc::new(crate::trees::TreesRuntime::load_onnx(
            path, signature, options,
        )?))
    }
    #[cfg(not(all(feature = "trees", feature = "tract")))]
    {
        let _ = (path, signature, options);
        Err(RuntimeError::NotCompiled {
            engine: "trees (ONNX graphs)",
            feature: "trees` and `tract",
        })
    }
}

fn load_ort(
    path: &Path,
    signature: &Signature,
    options: &LoadOptions,
) -> Result<Arc<dyn Runtime>, RuntimeError> {
    #[cfg(feature = "ort")]
    {
        Ok(Arc::new(crate::ort::OrtRuntime::load(
            path, signature, options,
        )?))
    }
    #[cfg(not(feature = "ort"))]
    {
        let _ = (path, signature, options);
        Err(RuntimeError::NotCompiled {
            engine: "ort",
            feature: "ort",
        })
    }
}

fn load_tract(
    path: &Path,
    signature: &Signature,
    options: &LoadOptions,
) -> Result<Arc<dyn Runtime>, RuntimeError> {
    #[cfg(feature = "tract")]
    {
        Ok(Arc::new(crate::tract::TractRuntime::load(
            path, signature, options,
        )?))
    }
    #[cfg(not(feature = "tract"))]
    {
        let _ = (path, signature, options);
        Err(RuntimeError::NotCompiled {
            engine: "tract",
            feature: "tract",
        })
    }
}

/// Loads a `format: safetensors` model with the Candle engine: the network `architecture`
/// describes, weights from `dir/artifact`, checked against `signature`.
pub fn load_safetensors(
    dir: &Path,
    artifact: &str,
    architecture: &serde_json::Value,
    signature: &Signature,
    options: &LoadOptions,
) -> Result<Arc<dyn Runtime>, RuntimeError> {
    #[cfg(feature = "candle")]
    {
        Ok(Arc::new(crate::candle::CandleRuntime::load(
            dir,
            artifact,
            architecture,
            signature,
            options,
        )?))
    }
    #[cfg(not(feature = "candle"))]
    {
        let _ = (dir, artifact, architecture, signature, options);
        Err(RuntimeError::NotCompiled {
            engine: "candle",
            feature: "candle",
        })
    }
}

/// Loads a `format: xgboost | lightgbm` model file with the trees engine, checked against
/// `signature`.
pub fn load_trees(
    path: &Path,
    format: TreeFormat,
    signature: &Signature,
    options: &LoadOptions,
) -> Result<Arc<dyn Runtime>, RuntimeError> {
    #[cfg(feature = "trees")]
    {
        Ok(Arc::new(crate::trees::TreesRuntime::load(
            path, format, signature, options,
        )?))
    }
    #[cfg(not(feature = "trees"))]
    {
        let _ = (path, format, signature, options);
        Err(RuntimeError::NotCompiled {
            engine: "trees",
            feature: "trees",
        })
    }
}

/// Reads a tree model file and describes it (what `ferry models push` fills a manifest from).
pub fn inspect_tree_model(path: &Path, format: TreeFormat) -> Result<TreeModelInfo, RuntimeError> {
    #[cfg(feature = "trees")]
    {
        crate::trees::inspect(path, format)
    }
    #[cfg(not(feature = "trees"))]
    {
        let _ = (path, format);
        Err(RuntimeError::NotCompiled {
            engine: "trees",
            feature: "trees",
        })
    }
}
