use crate::{DataType, Engine, InputError};

/// What can go wrong loading or running a model. `Clone`, so one failed batch can answer every
/// request in it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "the {engine} engine is not compiled into this binary: rebuild with cargo feature `{feature}`"
    )]
    NotCompiled {
        engine: &'static str,
        feature: &'static str,
    },
    #[error("ONNX Runtime is not available: {reason}")]
    OrtUnavailable { reason: String },
    #[error(
        "the {engine} engine does not implement the ONNX operator `{operator}` used by this model; {hint}"
    )]
    UnsupportedOperator {
        engine: Engine,
        operator: String,
        hint: String,
    },
    #[error("the {engine} engine does not support datatype {datatype}{context}")]
    UnsupportedDatatype {
        engine: Engine,
        datatype: DataType,
        context: String,
    },
    #[error("{engine} could not load the model: {message}")]
    Load { engine: Engine, message: String },
    #[error("{engine} cannot load {path} as a {format} model: {message}")]
    ModelFile {
        engine: Engine,
        path: String,
        format: &'static str,
        message: String,
    },
    #[error("model.yaml does not match the model ({engine}): {message}")]
    SignatureMismatch { engine: Engine, message: String },
    #[error(transparent)]
    Input(#[from] InputError),
    #[error(transparent)]
    Device(#[from] crate::device::DeviceError),
    #[error("{engine} failed to run the model: {message}")]
    Inference { engine: Engine, message: String },
}

#[cfg_attr(
    not(any(
        feature = "ort",
        feature = "tract",
        feature = "candle",
        feature = "trees"
    )),
    allow(dead_code)
)]
impl RuntimeError {
    // The trees engine reports load errors as `ModelFile`.
    #[cfg_attr(
        not(any(feature = "ort", feature = "tract", feature = "candle")),
        allow(dead_code)
    )]
    pub(crate) fn load(engine: Engine, error: impl std::fmt::Display) -> RuntimeError {
        RuntimeError::Load {
            engine,
            message: error.to_string(),
        }
    }

    pub(crate) fn inference(engine: Engine, error: impl std::fmt::Display) -> RuntimeError {
        RuntimeError::Inference {
            engine,
            message: error.to_string(),
        }
    }
}
