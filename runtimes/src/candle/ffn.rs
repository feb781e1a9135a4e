//! `architecture.kind: feed-forward`: a stack of layers over one FP32 input, optionally
//! concatenated with embeddings of categorical (integer) inputs.
//!
//! ```yaml
//! architecture:
//!   kind: feed-forward
//!   numeric: x                      # the FP32 input [-1, n] (default: the only FP32 input)
//!   embeddings:                     # categorical inputs, INT64/INT32 [-1] or [-1, 1]
//!     - {input: country, name: country_emb, categories: 20, dim: 4}   # country_emb.weight [20, 4]
//!   layers:                         # applied to concat(numeric, embeddings...) in order
//!     - {type: dense, name: fc1, units: 16}     # fc1.weight [16, in] (PyTorch layout), fc1.bias [16]
//!     - {type: relu}                            # relu | gelu | tanh | sigmoid | silu | softmax
//!     - {type: layer_norm, name: ln1, eps: 1e-5}  # ln1.weight, ln1.bias [16]
//!     - {type: dense, name: head, units: 3}
//!     - {type: softmax}
//!   output: probabilities           # default: the signature's only output
//! ```
//! Every tensor in model.safetensors must be one the spec names, with the shape it implies.

use super::{load_err, run_err};
use crate::{DataType, InputError, RuntimeError, Signature, Tensor, TensorData};
use candle_core::{DType, Device, Module, Tensor as CTensor};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

pub const KIND: &str = "feed-forward";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    #[allow(dead_code)]
    kind: String,
    #[serde(default)]
    numeric: Option<String>,
    #[serde(default)]
    embeddings: Vec<EmbeddingSpec>,
    layers: Vec<LayerSpec>,
    #[serde(default)]
    output: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EmbeddingSpec {
    input: String,
    name: String,
    categories: usize,
    dim: usize,
}

fn default_eps() -> f64 {
    1e-5
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum LayerSpec {
    Dense {
        name: String,
        units: usize,
        #[serde(default = "default_true")]
        bias: bool,
    },
    LayerNorm {
        name: String,
        #[serde(default = "default_eps")]
        eps: f64,
    },
    Relu,
    Gelu,
    Tanh,
    Sigmoid,
    Silu,
    Softmax,
}

enum Layer {
    Dense(candle_nn::Linear),
    LayerNorm(candle_nn::LayerNorm),
    Relu,
    Gelu,
    Tanh,
    Sigmoid,
    Silu,
    Softmax,
}

struct Embedding {
    input: String,
    categories: usize,
    table: candle_nn::Embedding,
}

pub struct FeedForward {
    numeric: Option<(String, usize)>,
    embeddings: Vec<Embedding>,
    layers: Vec<Layer>,
    output: String,
    output_rank: usize,
    device: Device,
}

/// Takes a tensor out of the file's map, checking that it exists with `shape`.
fn take(
    weights: &mut HashMap<String, CTensor>,
    name: &str,
    shape: &[usize],
    why: &str,
) -> Result<CTensor, RuntimeError> {
    let Some(t) = weights.remove(name) else {
        let mut present: Vec<&String> = weights.keys().collect();
        present.sort();
        return Err(load_err(format!(
            "model.safetensors has no tensor `{name}` ({why}, shape {shape:?}); unused tensors in the file: {present:?}"
        )));
    };
    if t.dims() != shape {
        return Err(load_err(format!(
            "tensor `{name}` in model.safetensors has shape {:?} but the architecture needs {shape:?} ({why})",
            t.dims()
        )));
    }
    t.to_dtype(DType::F32).map_err(load_err)
}

impl FeedForward {
    pub fn load(
        path: &Path,
        architecture: &serde_json::Value,
        signature: &Signature,
        device: &Device,
    ) -> Result<FeedForward, RuntimeError> {
        let spec: Spec = serde_json::from_value(architecture.clone())
            .map_err(|e| load_err(format!("model.yaml `architecture` ({KIND}): {e}")))?;
        let mut weights = candle_core::safetensors::load(path, device)
            .map_err(|e| load_err(format!("could not read {}: {e}", path.display())))?;

        let spec_input = |name: &str| {
            signature.input(name).ok_or_else(|| {
                load_err(format!(
                    "`architecture` names input `{name}` that model.yaml `inputs` does not declare"
                ))
            })
        };
        let numeric_name = match &spec.numeric {
            Some(n) => Some(n.clone()),
            None => {
                let fp32: Vec<&str> = signature
                    .inputs
                    .iter()
                    .filter(|s| s.datatype == DataType::Fp32)
                    .map(|s| s.name.as_str())
                    .collect();
                match fp32.as_slice() {
                    [] => None,
                    [one] => Some(one.to_string()),
                    many => {
                        return Err(load_err(format!(
                            "model.yaml has several FP32 inputs {many:?}; say which is the network's input with `architecture.numeric`"
                        )));
                    }
                }
            }
        };
        let numeric = match numeric_name {
            Some(name) => {
                let s = spec_input(&name)?;
                if s.datatype != DataType::Fp32 || s.shape.len() != 2 || s.shape[1] < 1 {
                    return Err(load_err(format!(
                        "input `{name}` must be FP32 with shape [-1, n], model.yaml has {} {:?}",
                        s.datatype, s.shape
                    )));
                }
                Some((name, s.shape[1] as usize))
            }
            None => None,
        };
        let mut width = numeric.as_ref().map_or(0, |(_, n)| *n);
        let mut embeddings = Vec::new();
        for e in &spec.embeddings {
            let s = spec_input(&e.input)?;
            let rank_ok = s.shape.len() == 1 || (s.shape.len() == 2 && s.shape[1] == 1);
            if !matches!(s.datatype, DataType::Int64 | DataType::Int32) || !rank_ok {
                return Err(load_err(format!(
                    "categorical input `{}` must be INT64 or INT32 with shape [-1] or [-1, 1], model.yaml has {} {:?}",
                    e.input, s.datatype, s.shape
                )));
            }
            let table = take(
                &mut weights,
                &format!("{}.weight", e.name),
                &[e.categories, e.dim],
                &format!("embedding of input `{}`", e.input),
            )?;
            embeddings.push(Embedding {
                input: e.input.clone(),
                categories: e.categories,
                table: candle_nn::Embedding::new(table, e.dim),
            });
            width += e.dim;
        }
        if width == 0 {
            return Err(load_err(
                "the network has no input: declare an FP32 input or `architecture.embeddings`",
            ));
        }
        for input in &signature.inputs {
            let used = numeric.as_ref().is_some_and(|(n, _)| *n == input.name)
                || embeddings.iter().any(|e| e.input == input.name);
            if !used {
                return Err(load_err(format!(
                    "model.yaml declares input `{}` that `architecture` does not use",
                    input.name
                )));
            }
        }
        let mut layers = Vec::new();
        for (i, layer) in spec.layers.iter().enumerate() {
            layers.push(match layer {
                LayerSpec::Dense { name, units, bias } => {
                    let why = format!("layers[{i}] dense {width} -> {units}");
                    let w = take(
                        &mut weights,
                        &format!("{name}.weight"),
                        &[*units, width],
                        &why,
                    )?;
                    let b = if *bias {
                        Some(take(
                            &mut weights,
                            &format!("{name}.bias"),
                            &[*units],
                            &why,
                        )?)
                    } else {
                        None
                    };
                    width = *units;
                    Layer::Dense(candle_nn::Linear::new(w, b))
                }
                LayerSpec::LayerNorm { name, eps } => {
                    let why = format!("layers[{i}] layer_norm over {width}");
                    let w = take(&mut weights, &format!("{name}.weight"), &[width], &why)?;
                    let b = take(&mut weights, &format!("{name}.bias"), &[width], &why)?;
                    Layer::LayerNorm(candle_nn::LayerNorm::new(w, b, *eps))
                }
                LayerSpec::Relu => Layer::Relu,
                LayerSpec::Gelu => Layer::Gelu,
                LayerSpec::Tanh => Layer::Tanh,
                LayerSpec::Sigmoid => Layer::Sigmoid,
                LayerSpec::Silu => Layer::Silu,
                LayerSpec::Softmax => Layer::Softmax,
            });
        }
        if !weights.is_empty() {
            let extra: BTreeMap<_, _> = weights.iter().map(|(k, v)| (k, v.dims())).collect();
            return Err(load_err(format!(
                "model.safetensors has tensors the architecture does not use: {extra:?}; check the layer names in `architecture`"
            )));
        }
        let output = match (&spec.output, signature.outputs.as_slice()) {
            (Some(o), _) => o.clone(),
            (None, [one]) => one.name.clone(),
            (None, _) => {
                return Err(load_err(
                    "model.yaml must declare exactly one output for a feed-forward network (or name it in `architecture.output`)",
                ));
            }
        };
        let out_spec = signature.output(&output).ok_or_else(|| {
            load_err(format!(
                "`architecture.output` is `{output}` but model.yaml `outputs` does not declare it"
            ))
        })?;
        let rank_ok = match out_spec.shape.as_slice() {
            [_, w] => *w < 0 || *w as usize == width,
            [_] => width == 1,
            _ => false,
        };
        if out_spec.datatype != DataType::Fp32 || !rank_ok {
            return Err(load_err(format!(
                "output `{output}` is {} {:?} in model.yaml, but the network gives FP32 [-1, {width}]",
                out_spec.datatype, out_spec.shape
            )));
        }
        Ok(FeedForward {
            numeric,
            embeddings,
            layers,
            output,
            output_rank: out_spec.shape.len(),
            device: device.clone(),
        })
    }

    pub fn run(
        &self,
        inputs: &[Tensor],
        signature: &Signature,
    ) -> Result<Vec<Tensor>, RuntimeError> {
        let get = |name: &str| {
            inputs.iter().find(|t| t.name == name).ok_or_else(|| {
                RuntimeError::Input(InputError::Missing {
                    name: name.to_string(),
                    expected: signature.inputs.iter().map(|s| s.name.clone()).collect(),
                })
            })
        };
        let mut parts = Vec::new();
        let mut rows = None;
        if let Some((name, n)) = &self.numeric {
            let t = get(name)?;
            let TensorData::Fp32(v) = &t.data else {
                return Err(run_err(format!("input `{name}` is not FP32")));
            };
            let b = v.len() / n;
            rows = Some(b);
            parts.push(CTensor::from_slice(v, (b, *n), &self.device).map_err(run_err)?);
        }
        for e in &self.embeddings {
            let t = get(&e.input)?;
            let ids: Vec<i64> = match &t.data {
                TensorData::Int64(v) => v.clone(),
                TensorData::Int32(v) => v.iter().map(|&x| x as i64).collect(),
                _ => return Err(run_err(format!("input `{}` is not an integer", e.input))),
            };
            if let Some(bad) = ids.iter().find(|&&i| i < 0 || i as usize >= e.categories) {
                return Err(RuntimeError::Input(InputError::Value {
                    name: e.input.clone(),
                    message: format!(
                        "category {bad} is out of range: this model knows categories 0..{}",
                        e.categories
                    ),
                }));
            }
            rows.get_or_insert(ids.len());
            let ids: Vec<u32> = ids.into_iter().map(|i| i as u32).collect();
            let ids = CTensor::from_vec(ids, t.shape[0], &self.device).map_err(run_err)?;
            parts.push(e.table.forward(&ids).map_err(run_err)?);
        }
        let mut x = if parts.len() == 1 {
            parts.pop().expect("one part. This is a bug.")
        } else {
            CTensor::cat(&parts, 1).map_err(run_err)?
        };
        for layer in &self.layers {
            x = match layer {
                Layer::Dense(l) => l.forward(&x),
                Layer::LayerNorm(l) => l.forward(&x),
                Layer::Relu => x.relu(),
                Layer::Gelu => x.gelu_erf(),
                Layer::Tanh => x.tanh(),
                Layer::Sigmoid => candle_nn::ops::sigmoid(&x),
                Layer::Silu => x.silu(),
                Layer::Softmax => candle_nn::ops::softmax_last_dim(&x),
            }
            .map_err(run_err)?;
        }
        let (b, w) = x.dims2().map_err(run_err)?;
        let data: Vec<f32> = x.flatten_all().and_then(|t| t.to_vec1()).map_err(run_err)?;
        let shape = if self.output_rank == 1 {
            vec![b]
        } else {
            vec![b, w]
        };
        debug_assert_eq!(rows.unwrap_or(b), b);
        let out =
            Tensor::new(self.output.clone(), shape, TensorData::Fp32(data)).map_err(run_err)?;
        Ok(vec![out])
    }
}
