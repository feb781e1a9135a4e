//! tract adapter: pure Rust, needs no external library. A runnable plan executes with `&self`,
//! so all compute threads share one loaded model.

use crate::{
    DataType, Engine, LoadOptions, Runtime, RuntimeError, Signature, Tensor, TensorData,
    check_engine_signature,
};
use std::path::Path;
use std::sync::Arc;
use tract_onnx::prelude::{
    DatumType, Framework, InferenceFact, InferenceModelExt, IntoTValue, TDim, TVec,
    Tensor as TractTensor, TypedSimplePlan,
};

mod onnx_ml;

const ENGINE: Engine = Engine::Tract;

pub struct TractRuntime {
    plan: Arc<TypedSimplePlan>,
    /// For each signature output, its index among the plan's outputs.
    output_index: Vec<usize>,
    signature: Signature,
}

fn datum_type(dt: DataType) -> Option<DatumType> {
    Some(match dt {
        DataType::Bool => DatumType::Bool,
        DataType::Uint8 => DatumType::U8,
        DataType::Uint16 => DatumType::U16,
        DataType::Uint32 => DatumType::U32,
        DataType::Uint64 => DatumType::U64,
        DataType::Int8 => DatumType::I8,
        DataType::Int16 => DatumType::I16,
        DataType::Int32 => DatumType::I32,
        DataType::Int64 => DatumType::I64,
        DataType::Fp32 => DatumType::F32,
        DataType::Fp64 => DatumType::F64,
        DataType::Bytes => return None,
    })
}

fn datatype(dt: DatumType) -> Option<DataType> {
    DataType::ALL
        .into_iter()
        .find(|&d| datum_type(d) == Some(dt))
}

impl TractRuntime {
    pub fn load(
        path: &Path,
        signature: &Signature,
        _options: &LoadOptions,
    ) -> Result<TractRuntime, RuntimeError> {
        let load = |e: &dyn std::fmt::Display| RuntimeError::load(ENGINE, e);
        let onnx = tract_onnx::onnx();
        let mut proto = onnx
            .proto_model_for_path(path)
            .map_err(|e| load(&format!("{e:#}")))?;
        onnx_ml::rewrite(&mut proto)?;
        let mut model = onnx
            .model_for_proto_model(&proto)
            .map_err(|e| load(&format!("{e:#}")))?;

        // tract keeps operators it does not know as placeholders and only fails when typing
        // the graph, with a message that does not name them; name them here.
        for node in model.nodes() {
            let name = node.op.name();
            if let Some(op) = name
                .strip_prefix("Unimplemented(")
                .and_then(|s| s.strip_suffix(')'))
            {
                return Err(RuntimeError::UnsupportedOperator {
                    engine: ENGINE,
                    operator: op.to_string(),
                    hint: "serve this model with ONNX Runtime instead (`onnx_engine: ort`)".into(),
                });
            }
        }

        // skl2onnx leaves the batch dimension unnamed; declare every variable dimension as a
        // symbol from the manifest so the optimizer can plan for any batch size.
        let input_outlets = model.input_outlets().map_err(|e| load(&e))?.to_vec();
        let mut engine_inputs = Vec::new();
        for (ix, outlet) in input_outlets.iter().enumerate() {
            let name = model.node(outlet.node).name.clone();
            let Some(spec) = signature.input(&name) else {
                engine_inputs.push((name, None, None));
                continue;
            };
            let dt = datum_type(spec.datatype).ok_or(RuntimeError::UnsupportedDatatype {
                engine: ENGINE,
                datatype: spec.datatype,
                context: format!(" (input `{name}`)"),
            })?;
            let dims: TVec<TDim> = spec
                .shape
                .iter()
                .enumerate()
                .map(|(axis, &d)| {
                    if d < 0 {
                        let sym = if axis == 0 {
                            "N".to_string()
                        } else {
                            format!("{name}_{axis}")
                        };
                        TDim::Sym(model.symbols.sym(&sym))
                    } else {
                        TDim::Val(d)
                    }
                })
                .collect();
            model
                .set_input_fact(ix, InferenceFact::dt_shape(dt, dims))
                .map_err(|e| load(&e))?;
            engine_inputs.push((name, Some(spec.datatype), Some(spec.shape.len())));
        }
        let output_names: Vec<String> = model
            .output_outlets()
            .map_err(|e| load(&e))?
            .iter()
            .map(|o| {
                model
                    .outlet_label(*o)
                    .map(str::to_string)
                    .unwrap_or_else(|| model.node(o.node).name.clone())
            })
            .collect();

        let typed = model
            .into_optimized()
            .map_err(|e| load(&format!("{e:#}")))?;
        let mut engine_outputs = Vec::new();
        for (ix, name) in output_names.iter().enumerate() {
            let fact = typed.output_fact(ix).map_err(|e| load(&e))?;
            let Some(dt) = datatype(output_datum_type(fact.datum_type)) else {
                if signature.output(name).is_none() {
                    continue;
                }
                return Err(RuntimeError::load(
                    ENGINE,
                    format!(
                        "output `{name}` has datatype {:?}, which ferry cannot return from tract",
                        fact.datum_type
                    ),
                ));
            };
            engine_outputs.push((name.clone(), Some(dt), Some(fact.rank())));
        }
        check_engine_signature(ENGINE, signature, &engine_inputs, &engine_outputs)?;
        let output_index = signature
            .outputs
            .iter()
            .map(|spec| {
                output_names
                    .iter()
                    .position(|n| *n == spec.name)
                    .expect("check_engine_signature found every output. This is a bug.")
            })
            .collect();
        let plan = TypedSimplePlan::new(typed).map_err(|e| load(&e))?;
        Ok(TractRuntime {
            plan,
            output_index,
            signature: signature.clone(),
        })
    }
}

fn to_tract(tensor: &Tensor) -> Result<TractTensor, RuntimeError> {
    let shape = &tensor.shape;
    let err = |e: &dyn std::fmt::Display| RuntimeError::inference(ENGINE, e);
    match &tensor.data {
        TensorData::Bool(v) => TractTensor::from_shape(shape, v),
        TensorData::Uint8(v) => TractTensor::from_shape(shape, v),
        TensorData::Uint16(v) => TractTensor::from_shape(shape, v),
        TensorData::Uint32(v) => TractTensor::from_shape(shape, v),
        TensorData::Uint64(v) => TractTensor::from_shape(shape, v),
        TensorData::Int8(v) => TractTensor::from_shape(shape, v),
        TensorData::Int16(v) => TractTensor::from_shape(shape, v),
        TensorData::Int32(v) => TractTensor::from_shape(shape, v),
        TensorData::Int64(v) => TractTensor::from_shape(shape, v),
        TensorData::Fp32(v) => TractTensor::from_shape(shape, v),
        TensorData::Fp64(v) => TractTensor::from_shape(shape, v),
        TensorData::Bytes(_) => {
            return Err(RuntimeError::UnsupportedDatatype {
                engine: ENGINE,
                datatype: DataType::Bytes,
                context: format!(" (input `{}`)", tensor.name),
            });
        }
    }
    .map_err(|e| err(&e))
}

/// tract parses ONNX `Cast` to INT64 as a cast to its symbolic dimension type (TDim), so INT64
/// outputs made by a cast (skl2onnx's labels) come out as TDim; ferry returns them as INT64.
fn output_datum_type(dt: DatumType) -> DatumType {
    if dt == DatumType::TDim {
        DatumType::I64
    } else {
        dt
    }
}

fn from_tract(name: &str, tensor: &TractTensor) -> Result<Tensor, RuntimeError> {
    let err = |e: &dyn std::fmt::Display| {
        RuntimeError::inference(ENGINE, format!("output `{name}`: {e}"))
    };
    let converted;
    let tensor = if tensor.datum_type() == DatumType::TDim {
        converted = tensor.cast_to::<i64>().map_err(|e| err(&e))?;
        &*converted
    } else {
        tensor
    };
    macro_rules! extract {
        ($t:ty, $variant:ident) => {
            TensorData::$variant(
                tensor
                    .to_plain_array_view::<$t>()
                    .map_err(|e| err(&e))?
                    .iter()
                    .copied()
                    .collect(),
            )
        };
    }
    let data = match datatype(tensor.datum_type()) {
        Some(DataType::Bool) => extract!(bool, Bool),
        Some(DataType::Uint8) => extract!(u8, Uint8),
        Some(DataType::Uint16) => extract!(u16, Uint16),
        Some(DataType::Uint32) => extract!(u32, Uint32),
        Some(DataType::Uint64) => extract!(u64, Uint64),
        Some(DataType::Int8) => extract!(i8, Int8),
        Some(DataType::Int16) => extract!(i16, Int16),
        Some(DataType::Int32) => extract!(i32, Int32),
        Some(DataType::Int64) => extract!(i64, Int64),
        Some(DataType::Fp32) => extract!(f32, Fp32),
        Some(DataType::Fp64) => extract!(f64, Fp64),
        Some(DataType::Bytes) | None => {
            return Err(err(&format!(
                "unsupported datatype {:?}",
                tensor.datum_type()
            )));
        }
    };
    Tensor::new(name, tensor.shape().to_vec(), data).map_err(|e| err(&e))
}

impl Runtime for TractRuntime {
    fn engine(&self) -> Engine {
        ENGINE
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, RuntimeError> {
        let values = inputs
            .iter()
            .map(|t| Ok(to_tract(t)?.into_tvalue()))
            .collect::<Result<TVec<_>, RuntimeError>>()?;
        let outputs = self
            .plan
            .run(values)
            .map_err(|e| RuntimeError::inference(ENGINE, format!("{e:#}")))?;
        self.signature
            .outputs
            .iter()
            .zip(&self.output_index)
            .map(|(spec, &ix)| from_tract(&spec.name, &outputs[ix]))
            .collect()
    }
}
