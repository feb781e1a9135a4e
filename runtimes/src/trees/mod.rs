//! The `trees` engine: XGBoost (JSON, UBJSON) and LightGBM (text) tree ensembles read from the
//! libraries' own files, and ONNX-ML tree ensemble graphs (with the `tract` feature, whose ONNX
//! protobuf types it reads), scored in pure Rust.
//!
//! Readers turn a file into format-neutral trees; [`ensemble::Ensemble`] flattens them into one
//! node array and scores blocks of rows with the trees in the outer loop. Large batches are
//! split into row ranges over the model's intra-op threads.

mod ensemble;
mod lightgbm;
#[cfg(feature = "tract")]
mod onnx;
mod ubjson;
mod xgboost;

use crate::{
    DataType, Engine, LoadOptions, Runtime, RuntimeError, Signature, Tensor, TensorData,
    TensorSpec, TreeFormat, TreeModelInfo, check_engine_signature,
};
use crate::{TREE_INPUT, TREE_LABEL};
use ensemble::Ensemble;
use std::path::Path;

const ENGINE: Engine = Engine::Trees;

/// Rows per thread below which splitting a batch costs more than it saves.
const ROWS_PER_THREAD: usize = 4096;

fn model_error(path: &Path, format: TreeFormat, message: impl Into<String>) -> RuntimeError {
    RuntimeError::ModelFile {
        engine: ENGINE,
        path: path.display().to_string(),
        format: format.describe(),
        message: message.into(),
    }
}

fn read(path: &Path, format: TreeFormat) -> Result<Ensemble, RuntimeError> {
    let err = |m: String| model_error(path, format, m);
    let bytes = std::fs::read(path).map_err(|e| err(format!("cannot read the file: {e}")))?;
    from_bytes(&bytes, format).map_err(err)
}

fn from_bytes(bytes: &[u8], format: TreeFormat) -> Result<Ensemble, String> {
    let raw = match format {
        TreeFormat::Xgboost => xgboost::parse(bytes),
        TreeFormat::Lightgbm => std::str::from_utf8(bytes)
            .map_err(|_| "not UTF-8 text: not a LightGBM text model".to_string())
            .and_then(lightgbm::parse),
    }?;
    Ensemble::build(raw)
}

/// For the fuzz target (`fuzz/`): reads `bytes` as a model file and, when that works, scores a
/// row of NaN and a row of zeros. Any input must give `Ok` or `Err`, never a panic.
#[doc(hidden)]
pub fn fuzz_model(bytes: &[u8], format: TreeFormat) -> Result<(), String> {
    let ensemble = from_bytes(bytes, format)?;
    let nf = ensemble.n_features();
    // Bounded so a model claiming billions of features cannot exhaust memory here.
    if nf <= 1 << 16 {
        let mut rows = vec![f32::NAN; nf];
        rows.extend(std::iter::repeat_n(0.0, nf));
        let margins = ensemble.margins(&rows);
        ensemble.finish(&margins);
    }
    Ok(())
}

fn info(ensemble: &Ensemble) -> TreeModelInfo {
    TreeModelInfo {
        n_features: ensemble.n_features(),
        n_classes: ensemble
            .objective()
            .is_classifier()
            .then(|| ensemble.n_classes()),
        n_trees: ensemble.n_trees(),
        feature_names: ensemble.feature_names().map(<[String]>::to_vec),
    }
}

/// Reads a tree model file and describes it (what `ferry models push` fills a manifest from).
pub fn inspect(path: &Path, format: TreeFormat) -> Result<TreeModelInfo, RuntimeError> {
    read(path, format).map(|e| info(&e))
}

pub struct TreesRuntime {
    ensemble: Ensemble,
    signature: Signature,
    threads: usize,
    #[cfg_attr(not(feature = "tract"), allow(dead_code))]
    finish: Finish,
}

/// How margins become outputs.
enum Finish {
    /// The ensemble's objective (XGBoost, LightGBM files).
    Objective,
    /// The ONNX graph's tree node and the steps after it.
    #[cfg(feature = "tract")]
    Onnx(onnx::OnnxTrees),
}

/// How errors name ONNX files that are not tree graphs the engine takes.
#[cfg(feature = "tract")]
const ONNX_FORMAT: &str = "tree-ensemble ONNX-ML";

impl TreesRuntime {
    pub fn load(
        path: &Path,
        format: TreeFormat,
        signature: &Signature,
        options: &LoadOptions,
    ) -> Result<TreesRuntime, RuntimeError> {
        let ensemble = read(path, format)?;
        let info = info(&ensemble);
        check_signature(&info, signature)?;
        tracing::debug!(
            path = %path.display(),
            trees = info.n_trees,
            features = info.n_features,
            "Tree model loaded."
        );
        Ok(TreesRuntime {
            ensemble,
            signature: signature.clone(),
            threads: options.intra_op_threads.max(1),
            finish: Finish::Objective,
        })
    }

    /// Loads an ONNX model whose graph is one tree ensemble plus simple nodes (see
    /// [`onnx`]); any other graph is refused with a [`RuntimeError::ModelFile`] saying why.
    #[cfg(feature = "tract")]
    pub fn load_onnx(
        path: &Path,
        signature: &Signature,
        options: &LoadOptions,
    ) -> Result<TreesRuntime, RuntimeError> {
        let err = |message: String| RuntimeError::ModelFile {
            engine: ENGINE,
            path: path.display().to_string(),
            format: ONNX_FORMAT,
            message,
        };
        use tract_onnx::prelude::Framework;
        let proto = tract_onnx::onnx()
            .proto_model_for_path(path)
            .map_err(|e| err(format!("{e:#}")))?;
        let declared_width = match &signature.inputs[..] {
            [input] => input
                .shape
                .get(1)
                .and_then(|&w| usize::try_from(w).ok())
                .filter(|&w| w > 0),
            _ => None,
        };
        let (ensemble, graph) = onnx::read(&proto, declared_width).map_err(err)?;
        check_onnx_signature(&ensemble, &graph, signature)?;
        tracing::debug!(
            path = %path.display(),
            trees = ensemble.n_trees(),
            features = ensemble.n_features(),
            "ONNX tree ensemble loaded on the trees engine."
        );
        Ok(TreesRuntime {
            ensemble,
            signature: signature.clone(),
            threads: options.intra_op_threads.max(1),
            finish: Finish::Onnx(graph),
        })
    }

    fn margins(&self, rows: &[f32]) -> Vec<f64> {
        let nf = self.ensemble.n_features();
        let n_rows = rows.len() / nf;
        let threads = self.threads.min(n_rows / ROWS_PER_THREAD).max(1);
        if threads == 1 {
            return self.ensemble.margins(rows);
        }
        let per_thread = n_rows.div_ceil(threads);
        std::thread::scope(|scope| {
            let parts: Vec<_> = rows
                .chunks(per_thread * nf)
                .map(|part| scope.spawn(|| self.ensemble.margins(part)))
                .collect();
            parts
                .into_iter()
                .flat_map(|p| p.join().expect("scoring never panics. This is a bug."))
                .collect()
        })
    }
}

/// The manifest may name its one input as it likes (FP32, `[-1, n_features]`) and list any of
/// the engine's outputs, in any order.
fn check_signature(info: &TreeModelInfo, signature: &Signature) -> Result<(), RuntimeError> {
    let mismatch = |message: String| RuntimeError::SignatureMismatch {
        engine: ENGINE,
        message,
    };
    let [input] = &signature.inputs[..] else {
        return Err(mismatch(format!(
            "a tree model takes one input (`{TREE_INPUT}`, FP32, [-1, {}]) but model.yaml declares {}",
            info.n_features,
            signature.inputs.len()
        )));
    };
    if input.shape.len() == 2 && input.shape[1] != info.n_features as i64 {
        return Err(mismatch(format!(
            "input `{}` has shape {:?} but the model has {} features: use [-1, {}]",
            input.name, input.shape, info.n_features, info.n_features
        )));
    }
    let engine = info.default_signature();
    let tensors = |specs: &[TensorSpec]| -> Vec<(String, Option<DataType>, Option<usize>)> {
        specs
            .iter()
            .map(|s| (s.name.clone(), Some(s.datatype), Some(s.shape.len())))
            .collect()
    };
    let mut inputs = tensors(&engine.inputs);
    inputs[0].0 = input.name.clone();
    check_engine_signature(ENGINE, signature, &inputs, &tensors(&engine.outputs))?;
    for spec in &signature.outputs {
        let want = engine
            .output(&spec.name)
            .expect("check_engine_signature found every output. This is a bug.");
        if let (Some(&got), Some(&width)) = (spec.shape.get(1), want.shape.get(1))
            && got != width
            && got != -1
        {
            return Err(mismatch(format!(
                "output `{}` has shape {:?} but the model gives {width} columns: use {:?}",
                spec.name, spec.shape, want.shape
            )));
        }
    }
    Ok(())
}

/// The manifest declares the graph's own input and any of its outputs, with their types.
#[cfg(feature = "tract")]
fn check_onnx_signature(
    ensemble: &Ensemble,
    graph: &onnx::OnnxTrees,
    signature: &Signature,
) -> Result<(), RuntimeError> {
    let mismatch = |message: String| RuntimeError::SignatureMismatch {
        engine: ENGINE,
        message,
    };
    let nf = ensemble.n_features();
    let inputs = [(graph.input.clone(), Some(DataType::Fp32), Some(2))];
    let outputs: Vec<_> = graph
        .outputs
        .iter()
        .map(|o| match o.source {
            onnx::Source::Label => (o.name.clone(), Some(DataType::Int64), Some(1)),
            onnx::Source::Scores => (o.name.clone(), Some(DataType::Fp32), Some(2)),
        })
        .collect();
    check_engine_signature(ENGINE, signature, &inputs, &outputs)?;
    for input in &signature.inputs {
        if let Some(&w) = input.shape.get(1)
            && w >= 0
            && w != nf as i64
        {
            return Err(mismatch(format!(
                "input `{}` has shape {:?} but the model has {nf} features: use [-1, {nf}]",
                input.name, input.shape
            )));
        }
    }
    for spec in &signature.outputs {
        let scores = graph
            .outputs
            .iter()
            .any(|o| o.name == spec.name && o.source == onnx::Source::Scores);
        if scores
            && let Some(&w) = spec.shape.get(1)
            && w >= 0
            && w != graph.width as i64
        {
            return Err(mismatch(format!(
                "output `{}` has shape {:?} but the model gives {} columns",
                spec.name, spec.shape, graph.width
            )));
        }
    }
    Ok(())
}

impl Runtime for TreesRuntime {
    fn engine(&self) -> Engine {
        ENGINE
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, RuntimeError> {
        let input = inputs
            .first()
            .ok_or_else(|| RuntimeError::inference(ENGINE, "no input tensor"))?;
        let TensorData::Fp32(rows) = &input.data else {
            return Err(RuntimeError::UnsupportedDatatype {
                engine: ENGINE,
                datatype: input.datatype(),
                context: format!(" (input `{}`: tree models take FP32)", input.name),
            });
        };
        let nf = self.ensemble.n_features();
        if input.shape.len() != 2 || input.shape[1] != nf {
            return Err(RuntimeError::inference(
                ENGINE,
                format!(
                    "input `{}` has shape {:?}, the model needs [rows, {nf}]",
                    input.name, input.shape
                ),
            ));
        }
        let n_rows = input.shape[0];
        let margins = self.margins(rows);
        #[cfg(feature = "tract")]
        if let Finish::Onnx(graph) = &self.finish {
            return onnx_outputs(graph, &self.signature, &margins, n_rows);
        }
        let (labels, columns) = self.ensemble.finish(&margins);
        let width = if labels.is_some() {
            self.ensemble.n_classes()
        } else {
            1
        };
        let mut labels = labels;
        let mut columns = Some(columns);
        self.signature
            .outputs
            .iter()
            .map(|spec| {
                let (shape, data) = match spec.name.as_str() {
                    TREE_LABEL => (
                        vec![n_rows],
                        TensorData::Int64(labels.take().ok_or_else(|| {
                            RuntimeError::inference(ENGINE, "`label` listed twice")
                        })?),
                    ),
                    _ => (
                        vec![n_rows, width],
                        TensorData::Fp32(columns.take().ok_or_else(|| {
                            RuntimeError::inference(ENGINE, "output listed twice")
                        })?),
                    ),
                };
                Tensor::new(spec.name.clone(), shape, data)
                    .map_err(|e| RuntimeError::inference(ENGINE, e))
            })
            .collect()
    }
}

#[cfg(feature = "tract")]
fn onnx_outputs(
    graph: &onnx::OnnxTrees,
    signature: &Signature,
    margins: &[f64],
    n_rows: usize,
) -> Result<Vec<Tensor>, RuntimeError> {
    let (labels, scores) = graph.finish(margins);
    signature
        .outputs
        .iter()
        .map(|spec| {
            let out = graph
                .outputs
                .iter()
                .find(|o| o.name == spec.name)
                .ok_or_else(|| {
                    RuntimeError::inference(ENGINE, format!("no output `{}`", spec.name))
                })?;
            let (shape, data) = match out.source {
                onnx::Source::Label => (vec![n_rows], TensorData::Int64(labels.clone())),
                onnx::Source::Scores => (
                    vec![n_rows, graph.width],
                    TensorData::Fp32(onnx::apply_steps(&out.steps, &scores, graph.width)),
                ),
            };
            Tensor::new(spec.name.clone(), shape, data)
                .map_err(|e| RuntimeError::inference(ENGINE, e))
        })
        .collect()
}
