//! ferry's engine layer: one small synchronous [`Runtime`] trait, the tensor vocabulary, and
//! adapters for ONNX Runtime (`ort` feature), tract (`tract` feature), Candle (`candle`
//! feature, `format: safetensors` models) and the native tree-ensemble engine (`trees` feature,
//! `format: xgboost | lightgbm` models), plus device discovery and placement.
//!
//! Engines never batch or schedule for themselves: the server's scheduler owns that, and calls
//! [`Runtime::run`] from its own compute threads.

// Without engine features the crate is the tensor vocabulary alone (what `ferry-registry`
// uses); the server refuses to build without an engine.

#[cfg(feature = "candle")]
pub mod candle;
pub mod device;
mod error;
mod loader;
#[cfg(feature = "ort")]
pub mod ort;
#[cfg(feature = "ort")]
pub mod ort_library;
mod tensor;
#[cfg(feature = "tract")]
pub mod tract;
#[cfg(feature = "trees")]
pub mod trees;

pub use device::{Device, DeviceRequest, Devices, Placement};
pub use error::RuntimeError;
pub use loader::{
    LoadOptions, OnnxEngine, inspect_tree_model, load_onnx, load_safetensors, load_trees,
};
pub use tensor::{
    DataType, InputError, ShapeMismatch, Signature, Tensor, TensorData, TensorSpec, element_count,
};

use serde::Serialize;
use std::fmt;

/// The engine that runs a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    Ort,
    Tract,
    Candle,
    Trees,
}

impl Engine {
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Ort => "ort",
            Engine::Tract => "tract",
            Engine::Candle => "candle",
            Engine::Trees => "trees",
        }
    }
}

/// The file formats of the `trees` engine (manifest `format: xgboost | lightgbm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TreeFormat {
    /// XGBoost `save_model` output, JSON (`model.json`) or UBJSON (`model.ubj`); the content
    /// decides which.
    Xgboost,
    /// LightGBM `save_model` text (`model.txt`).
    Lightgbm,
}

impl TreeFormat {
    /// How error messages name the format.
    pub fn describe(self) -> &'static str {
        match self {
            TreeFormat::Xgboost => "XGBoost JSON/UBJSON",
            TreeFormat::Lightgbm => "LightGBM text",
        }
    }
}

/// Default tensor names of tree models (README, "Tree models").
pub const TREE_INPUT: &str = "X";
pub const TREE_LABEL: &str = "label";
pub const TREE_PROBABILITIES: &str = "probabilities";
pub const TREE_PREDICTIONS: &str = "predictions";

/// What a tree model file holds, as far as serving it is concerned.
#[derive(Debug, Clone, PartialEq)]
pub struct TreeModelInfo {
    pub n_features: usize,
    /// `Some(classes)` for classifiers (2 for binary models), `None` for regressors.
    pub n_classes: Option<usize>,
    pub n_trees: usize,
    pub feature_names: Option<Vec<String>>,
}

impl TreeModelInfo {
    /// The signature a manifest gets when it names none: input `X` FP32 `[-1, n_features]`;
    /// classifiers answer `label` and `probabilities`, regressors `predictions`.
    pub fn default_signature(&self) -> Signature {
        let spec = |name: &str, datatype, shape| TensorSpec {
            name: name.to_string(),
            datatype,
            shape,
        };
        Signature {
            inputs: vec![spec(
                TREE_INPUT,
                DataType::Fp32,
                vec![-1, self.n_features as i64],
            )],
            outputs: match self.n_classes {
                Some(k) => vec![
                    spec(TREE_LABEL, DataType::Int64, vec![-1]),
                    spec(TREE_PROBABILITIES, DataType::Fp32, vec![-1, k as i64]),
                ],
                None => vec![spec(TREE_PREDICTIONS, DataType::Fp32, vec![-1, 1])],
            },
        }
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A loaded model, ready to run. Implementations are shared by all compute threads of a model,
/// hence `&self` and `Send + Sync`.
pub trait Runtime: Send + Sync {
    fn engine(&self) -> Engine;

    /// The signature the engine runs, already checked against the model manifest at load.
    fn signature(&self) -> &Signature;

    /// The largest batch the engine accepts, when it has such a limit.
    fn max_batch_size(&self) -> Option<usize> {
        None
    }

    /// Runs one batch. `inputs` are in signature order and already validated against
    /// [`Runtime::signature`]; the outputs come back in signature order.
    fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, RuntimeError>;

    /// Runs `inputs` on the caller's thread if that needs no wait for another call to finish;
    /// `None` when it would wait (an engine whose sessions are all busy), and the caller queues
    /// the request instead. Engines whose `run` never waits on another call just run.
    fn try_run_now(&self, inputs: &[Tensor]) -> Option<Result<Vec<Tensor>, RuntimeError>> {
        Some(self.run(inputs))
    }

    /// Where the model runs; engines without GPU support run on the CPU.
    fn device(&self) -> Device {
        Device::Cpu
    }
}

#[cfg_attr(
    not(any(feature = "ort", feature = "tract", feature = "trees")),
    allow(dead_code)
)]
/// Checks that what an engine reports about a model agrees with the manifest's signature, so a
/// wrong manifest fails at load, not at the first request.
pub(crate) fn check_engine_signature(
    engine: Engine,
    manifest: &Signature,
    inputs: &[(String, Option<DataType>, Option<usize>)],
    outputs: &[(String, Option<DataType>, Option<usize>)],
) -> Result<(), RuntimeError> {
    let mismatch = |message: String| RuntimeError::SignatureMismatch { engine, message };
    for (kind, declared, actual) in [
        ("input", &manifest.inputs, inputs),
        ("output", &manifest.outputs, outputs),
    ] {
        for spec in declared {
            let Some((_, dt, rank)) = actual.iter().find(|(n, _, _)| *n == spec.name) else {
                let names: Vec<&str> = actual.iter().map(|(n, _, _)| n.as_str()).collect();
                return Err(mismatch(format!(
                    "model.yaml declares {kind} `{}` but the model's {kind}s are {names:?}",
                    spec.name
                )));
            };
            if let Some(dt) = dt
                && *dt != spec.datatype
            {
                return Err(mismatch(format!(
                    "model.yaml declares {kind} `{}` as {} but the model has {dt}",
                    spec.name, spec.datatype
                )));
            }
            if let Some(rank) = rank
                && *rank != spec.shape.len()
            {
                return Err(mismatch(format!(
                    "model.yaml declares {kind} `{}` with rank {} (shape {:?}) but the model's rank is {rank}",
                    spec.name,
                    spec.shape.len(),
                    spec.shape
                )));
            }
        }
    }
    for (name, _, _) in inputs {
        if manifest.input(name).is_none() {
            return Err(mismatch(format!(
                "the model has input `{name}` that model.yaml does not declare"
            )));
        }
    }
    Ok(())
}
