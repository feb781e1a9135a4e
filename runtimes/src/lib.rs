//! ferry's engine layer: one small synchronous [`Runtime`] trait, the tensor vocabulary, and
//! adapters for ONNX Runtime (`ort` feature), tract (`tract` feature) and Candle (`candle`
//! feature, `format: safetensors` models), plus device discovery and placement.
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

pub use device::{Device, DeviceRequest, Devices, Placement};
pub use error::RuntimeError;
pub use loader::{LoadOptions, OnnxEngine, load_onnx, load_safetensors};
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
}

impl Engine {
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Ort => "ort",
            Engine::Tract => "tract",
            Engine::Candle => "candle",
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

    /// Where the model runs; engines without GPU support run on the CPU.
    fn device(&self) -> Device {
        Device::Cpu
    }
}

#[cfg_attr(not(any(feature = "ort", feature = "tract")), allow(dead_code))]
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
