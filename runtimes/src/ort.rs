//! ONNX Runtime adapter. The library is loaded at run time (`load-dynamic`) from the
//! `libonnxruntime.so` that the PyPI `onnxruntime` wheel ships; nothing is downloaded at build.

use crate::{
    DataType, Engine, LoadOptions, Runtime, RuntimeError, Signature, Tensor, TensorData,
    check_engine_signature,
};
use ort::session::{Session, SessionInputValue, builder::GraphOptimizationLevel};
use ort::value::{DynValue, TensorElementType, TensorRef, ValueType};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

const ENGINE: Engine = Engine::Ort;

// NOTE: ort rc.15 allows one Environment per process, and the library can only be loaded
// once; the first outcome (success or the reason it failed) is kept for the process lifetime.
static ENVIRONMENT: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();

/// Loads ONNX Runtime from `library`. Only the first call per process loads anything; later
/// calls report that first outcome.
pub fn init(library: &Path) -> Result<(), RuntimeError> {
    ENVIRONMENT
        .get_or_init(|| {
            if !library.is_file() {
                return Err(format!("no library file at {}", library.display()));
            }
            ort::init_from(library)
                .map_err(|e| format!("could not load {}: {e}", library.display()))?
                .with_name("ferry")
                .with_telemetry(false)
                .build()
                .inspect(|env| {
                    env.set_log_level(log_level(std::env::var("ORT_LOG").ok().as_deref()))
                })
                .map_err(|e| format!("could not create the ONNX Runtime environment: {e}"))
        })
        .as_ref()
        .map(|_| ())
        .map_err(|reason| RuntimeError::OrtUnavailable {
            reason: reason.clone(),
        })
}

/// ONNX Runtime's own messages reach ferry's log through `tracing`; at its INFO level it writes
/// ~100 lines per session (every graph transformer it tried), which buries ferry's own lines.
/// Warnings and errors still come through; `ORT_LOG=info|verbose` asks for the rest.
fn log_level(ort_log: Option<&str>) -> ort::logging::LogLevel {
    use ort::logging::LogLevel;
    match ort_log {
        Some("verbose") => LogLevel::Verbose,
        Some("info") => LogLevel::Info,
        Some("error") => LogLevel::Error,
        Some("fatal") => LogLevel::Fatal,
        _ => LogLevel::Warning,
    }
}

/// True once [`init`] has loaded the library.
pub fn is_available() -> bool {
    matches!(ENVIRONMENT.get(), Some(Ok(_)))
}

fn environment() -> Result<&'static ort::environment::Environment, RuntimeError> {
    match ENVIRONMENT.get() {
        Some(Ok(env)) => Ok(env),
        Some(Err(reason)) => Err(RuntimeError::OrtUnavailable {
            reason: reason.clone(),
        }),
        None => Err(RuntimeError::OrtUnavailable {
            reason: "ferry_runtimes::ort::init was not called with the library path".into(),
        }),
    }
}

/// A model in ONNX Runtime. `Session::run` needs `&mut`, so sessions sit in a small pool of
/// mutexes; compute threads take the first free one.
pub struct OrtRuntime {
    sessions: Vec<Mutex<Session>>,
    next: AtomicUsize,
    signature: Signature,
}

impl OrtRuntime {
    pub fn load(
        path: &Path,
        signature: &Signature,
        options: &LoadOptions,
    ) -> Result<OrtRuntime, RuntimeError> {
        let env = environment()?;
        let mut sessions = Vec::with_capacity(options.sessions.max(1));
        for _ in 0..options.sessions.max(1) {
            let load_err = |e: ort::Error<_>| RuntimeError::load(ENGINE, e);
            let session = Session::builder(env)
                .map_err(|e| RuntimeError::load(ENGINE, e))?
                .with_optimization_level(GraphOptimizationLevel::All)
                .map_err(load_err)?
                .with_intra_threads(options.intra_op_threads.max(1))
                .map_err(load_err)?
                .with_inter_threads(1)
                .map_err(load_err)?
                .with_intra_op_spinning(options.intra_op_spinning)
                .map_err(load_err)?
                .commit_from_file(path)
                .map_err(|e| RuntimeError::load(ENGINE, e))?;
            sessions.push(Mutex::new(session));
        }
        let describe =
            |outlets: &[ort::value::Outlet]| -> Vec<(String, Option<DataType>, Option<usize>)> {
                outlets
                    .iter()
                    .map(|o| match o.dtype() {
                        ValueType::Tensor { ty, shape, .. } => {
                            (o.name().to_string(), datatype(*ty), Some(shape.len()))
                        }
                        _ => (o.name().to_string(), None, None),
                    })
                    .collect()
            };
        {
            let first = sessions[0].lock().unwrap_or_else(|e| e.into_inner());
            let inputs = describe(first.inputs());
            let outputs = describe(first.outputs());
            check_engine_signature(ENGINE, signature, &inputs, &outputs)?;
            for (name, dt, _) in inputs.iter().chain(&outputs) {
                if dt.is_none() && signature.input(name).or(signature.output(name)).is_some() {
                    return Err(RuntimeError::SignatureMismatch {
                        engine: ENGINE,
                        message: format!(
                            "`{name}` is not a tensor of a supported datatype (maps and sequences, as skl2onnx's ZipMap produces, cannot be served: export with zipmap=False)"
                        ),
                    });
                }
            }
        }
        Ok(OrtRuntime {
            sessions,
            next: AtomicUsize::new(0),
            signature: signature.clone(),
        })
    }

    fn session(&self) -> std::sync::MutexGuard<'_, Session> {
        let n = self.sessions.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for i in 0..n {
            if let Ok(guard) = self.sessions[(start + i) % n].try_lock() {
                return guard;
            }
        }
        // A panic while holding a session cannot leave ONNX Runtime state half-updated in a
        // way we could observe, so a poisoned lock is still usable.
        self.sessions[start % n]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

impl OrtRuntime {
    fn run_on(
        &self,
        session: &mut Session,
        inputs: &[Tensor],
    ) -> Result<Vec<Tensor>, RuntimeError> {
        let values = inputs
            .iter()
            .map(|t| Ok((t.name.as_str(), to_value(t)?)))
            .collect::<Result<Vec<_>, RuntimeError>>()?;
        let outputs = session
            .run(values)
            .map_err(|e| RuntimeError::inference(ENGINE, e))?;
        self.signature
            .outputs
            .iter()
            .map(|spec| {
                let value = outputs.get(&spec.name).ok_or_else(|| {
                    RuntimeError::inference(ENGINE, format!("no output `{}`", spec.name))
                })?;
                from_value(&spec.name, value)
            })
            .collect()
    }
}

fn datatype(ty: TensorElementType) -> Option<DataType> {
    Some(match ty {
        TensorElementType::Bool => DataType::Bool,
        TensorElementType::Uint8 => DataType::Uint8,
        TensorElementType::Uint16 => DataType::Uint16,
        TensorElementType::Uint32 => DataType::Uint32,
        TensorElementType::Uint64 => DataType::Uint64,
        TensorElementType::Int8 => DataType::Int8,
        TensorElementType::Int16 => DataType::Int16,
        TensorElementType::Int32 => DataType::Int32,
        TensorElementType::Int64 => DataType::Int64,
        TensorElementType::Float32 => DataType::Fp32,
        TensorElementType::Float64 => DataType::Fp64,
        TensorElementType::String => DataType::Bytes,
        _ => return None,
    })
}

fn to_value(tensor: &Tensor) -> Result<SessionInputValue<'_>, RuntimeError> {
    let shape = tensor.shape.clone();
    let err = |e: ort::Error| RuntimeError::inference(ENGINE, e);
    Ok(match &tensor.data {
        TensorData::Bytes(items) => {
            let strings = items
                .iter()
                .map(|b| String::from_utf8(b.clone()))
                .collect::<Result<Vec<String>, _>>()
                .map_err(|_| RuntimeError::UnsupportedDatatype {
                    engine: ENGINE,
                    datatype: DataType::Bytes,
                    context: format!(" with non-UTF-8 elements (input `{}`)", tensor.name),
                })?;
            ort::value::Tensor::from_string_array((shape, strings.as_slice()))
                .map_err(err)?
                .into()
        }
        TensorData::Bool(v) => primitive(shape, v).map_err(err)?,
        TensorData::Uint8(v) => primitive(shape, v).map_err(err)?,
        TensorData::Uint16(v) => primitive(shape, v).map_err(err)?,
        TensorData::Uint32(v) => primitive(shape, v).map_err(err)?,
        TensorData::Uint64(v) => primitive(shape, v).map_err(err)?,
        TensorData::Int8(v) => primitive(shape, v).map_err(err)?,
        TensorData::Int16(v) => primitive(shape, v).map_err(err)?,
        TensorData::Int32(v) => primitive(shape, v).map_err(err)?,
        TensorData::Int64(v) => primitive(shape, v).map_err(err)?,
        TensorData::Fp32(v) => primitive(shape, v).map_err(err)?,
        TensorData::Fp64(v) => primitive(shape, v).map_err(err)?,
    })
}

fn primitive<T>(shape: Vec<usize>, data: &[T]) -> ort::Result<SessionInputValue<'_>>
where
    T: ort::value::PrimitiveTensorElementType + Clone + std::fmt::Debug + 'static,
{
    Ok(TensorRef::from_array_view((shape, data))?.into())
}

fn from_value(name: &str, value: &DynValue) -> Result<Tensor, RuntimeError> {
    let err = |e: ort::Error| RuntimeError::inference(ENGINE, format!("output `{name}`: {e}"));
    let ty = value
        .dtype()
        .tensor_type()
        .and_then(datatype)
        .ok_or_else(|| {
            RuntimeError::inference(ENGINE, format!("output `{name}` is not a supported tensor"))
        })?;
    macro_rules! extract {
        ($t:ty, $variant:ident) => {{
            let (shape, data) = value.try_extract_tensor::<$t>().map_err(err)?;
            (shape.to_vec(), TensorData::$variant(data.to_vec()))
        }};
    }
    let (shape, data) = match ty {
        DataType::Bool => extract!(bool, Bool),
        DataType::Uint8 => extract!(u8, Uint8),
        DataType::Uint16 => extract!(u16, Uint16),
        DataType::Uint32 => extract!(u32, Uint32),
        DataType::Uint64 => extract!(u64, Uint64),
        DataType::Int8 => extract!(i8, Int8),
        DataType::Int16 => extract!(i16, Int16),
        DataType::Int32 => extract!(i32, Int32),
        DataType::Int64 => extract!(i64, Int64),
        DataType::Fp32 => extract!(f32, Fp32),
        DataType::Fp64 => extract!(f64, Fp64),
        DataType::Bytes => {
            let (shape, strings) = value.try_extract_strings().map_err(err)?;
            (
                shape.to_vec(),
                TensorData::Bytes(strings.into_iter().map(String::into_bytes).collect()),
            )
        }
    };
    let shape = shape.into_iter().map(|d| d.max(0) as usize).collect();
    Tensor::new(name, shape, data).map_err(|e| RuntimeError::inference(ENGINE, e))
}

impl Runtime for OrtRuntime {
    fn engine(&self) -> Engine {
        ENGINE
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, RuntimeError> {
        self.run_on(&mut self.session(), inputs)
    }

    fn try_run_now(&self, inputs: &[Tensor]) -> Option<Result<Vec<Tensor>, RuntimeError>> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let n = self.sessions.len();
        (0..n).find_map(|i| {
            let mut session = self.sessions[(start + i) % n].try_lock().ok()?;
            Some(self.run_on(&mut session, inputs))
        })
    }
}
