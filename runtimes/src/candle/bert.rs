//! `architecture.kind: bert-sentence-embedding`: sentence embeddings from a BERT encoder
//! (e.g. all-MiniLM-L6-v2), the way sentence-transformers computes them: tokenize (in Rust,
//! with the model's `tokenizer.json`), encode, mean-pool over real tokens, L2-normalise.
//!
//! ```yaml
//! format: safetensors
//! artifact: model.safetensors
//! files: {config.json: <sha256>, tokenizer.json: <sha256>}
//! inputs:  [{name: text, datatype: BYTES, shape: [-1]}]          # UTF-8 sentences
//! outputs: [{name: embedding, datatype: FP32, shape: [-1, 384]}]
//! architecture:
//!   kind: bert-sentence-embedding
//!   config: config.json          # Hugging Face BERT config
//!   tokenizer: tokenizer.json    # Hugging Face tokenizers file
//!   pooling: mean                # mean | cls
//!   normalize: true              # L2-normalise the pooled vector
//!   max_seq_length: 256          # longer inputs are truncated (sentence-transformers does too)
//! ```

use super::{load_err, run_err};
use crate::{DataType, InputError, RuntimeError, Signature, Tensor, TensorData};
use candle_core::{D, DType, Device, Tensor as CTensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use serde::Deserialize;
use std::path::Path;
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

pub const KIND: &str = "bert-sentence-embedding";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Pooling {
    Mean,
    Cls,
}

fn default_config() -> String {
    "config.json".into()
}
fn default_tokenizer() -> String {
    "tokenizer.json".into()
}
fn default_pooling() -> Pooling {
    Pooling::Mean
}
fn default_true() -> bool {
    true
}
fn default_max_seq_length() -> usize {
    256
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    #[allow(dead_code)]
    kind: String,
    #[serde(default = "default_config")]
    config: String,
    #[serde(default = "default_tokenizer")]
    tokenizer: String,
    #[serde(default = "default_pooling")]
    pooling: Pooling,
    #[serde(default = "default_true")]
    normalize: bool,
    #[serde(default = "default_max_seq_length")]
    max_seq_length: usize,
}

pub struct SentenceEmbedder {
    model: BertModel,
    tokenizer: Tokenizer,
    pooling: Pooling,
    normalize: bool,
    input: String,
    output: String,
    device: Device,
}

impl SentenceEmbedder {
    pub fn load(
        dir: &Path,
        artifact: &str,
        architecture: &serde_json::Value,
        signature: &Signature,
        device: &Device,
    ) -> Result<SentenceEmbedder, RuntimeError> {
        let spec: Spec = serde_json::from_value(architecture.clone())
            .map_err(|e| load_err(format!("model.yaml `architecture` ({KIND}): {e}")))?;
        let read = |file: &str, key: &str| {
            std::fs::read(dir.join(file)).map_err(|e| {
                load_err(format!(
                    "could not read `{file}` (architecture.{key}; list it under model.yaml `files`): {e}"
                ))
            })
        };
        let config: Config = serde_json::from_slice(&read(&spec.config, "config")?)
            .map_err(|e| load_err(format!("`{}` is not a BERT config: {e}", spec.config)))?;
        let (input, output) = match (signature.inputs.as_slice(), signature.outputs.as_slice()) {
            ([i], [o])
                if i.datatype == DataType::Bytes
                    && i.shape.len() == 1
                    && o.datatype == DataType::Fp32
                    && o.shape.len() == 2
                    && (o.shape[1] < 0 || o.shape[1] as usize == config.hidden_size) =>
            {
                (i.name.clone(), o.name.clone())
            }
            _ => {
                return Err(load_err(format!(
                    "a {KIND} model takes one BYTES input of shape [-1] and gives one FP32 output of shape [-1, {}] (hidden_size in `{}`); model.yaml declares inputs {:?} and outputs {:?}",
                    config.hidden_size, spec.config, signature.inputs, signature.outputs
                )));
            }
        };
        let max_len = spec.max_seq_length.min(config.max_position_embeddings);
        let mut tokenizer = Tokenizer::from_bytes(read(&spec.tokenizer, "tokenizer")?)
            .map_err(|e| load_err(format!("`{}` is not a tokenizer: {e}", spec.tokenizer)))?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                ..Default::default()
            }))
            .map_err(load_err)?;
        let pad = tokenizer.get_padding().cloned().unwrap_or_default();
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            pad_id: config.pad_token_id as u32,
            ..pad
        }));
        let weights = read(artifact, "artifact")?;
        let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, device)
            .map_err(|e| load_err(format!("could not read {artifact}: {e}")))?;
        let model = BertModel::load(vb, &config).map_err(|e| {
            load_err(format!(
                "{artifact} does not hold the BERT weights `{}` describes: {e}",
                spec.config
            ))
        })?;
        Ok(SentenceEmbedder {
            model,
            tokenizer,
            pooling: spec.pooling,
            normalize: spec.normalize,
            input,
            output,
            device: device.clone(),
        })
    }

    pub fn run(
        &self,
        inputs: &[Tensor],
        signature: &Signature,
    ) -> Result<Vec<Tensor>, RuntimeError> {
        let Some(t) = inputs.iter().find(|t| t.name == self.input) else {
            return Err(RuntimeError::Input(InputError::Missing {
                name: self.input.clone(),
                expected: signature.inputs.iter().map(|s| s.name.clone()).collect(),
            }));
        };
        let TensorData::Bytes(items) = &t.data else {
            return Err(run_err(format!("input `{}` is not BYTES", self.input)));
        };
        let mut texts = Vec::with_capacity(items.len());
        for (i, b) in items.iter().enumerate() {
            texts.push(std::str::from_utf8(b).map_err(|e| {
                RuntimeError::Input(InputError::Value {
                    name: self.input.clone(),
                    message: format!("element {i} is not UTF-8 text: {e}"),
                })
            })?);
        }
        let rows = texts.len();
        let encodings = self
            .tokenizer
            .encode_batch(texts, true)
            .map_err(|e| run_err(format!("tokenization failed: {e}")))?;
        let seq = encodings.first().map_or(0, |e| e.len());
        let mut ids = Vec::with_capacity(rows * seq);
        let mut types = Vec::with_capacity(rows * seq);
        let mut mask = Vec::with_capacity(rows * seq);
        for e in &encodings {
            ids.extend_from_slice(e.get_ids());
            types.extend_from_slice(e.get_type_ids());
            mask.extend_from_slice(e.get_attention_mask());
        }
        let embeddings = self.embed(ids, types, mask, rows, seq).map_err(run_err)?;
        let width = embeddings.dim(1).map_err(run_err)?;
        let data: Vec<f32> = embeddings
            .flatten_all()
            .and_then(|t| t.to_vec1())
            .map_err(run_err)?;
        let out = Tensor::new(
            self.output.clone(),
            vec![rows, width],
            TensorData::Fp32(data),
        )
        .map_err(run_err)?;
        Ok(vec![out])
    }

    fn embed(
        &self,
        ids: Vec<u32>,
        types: Vec<u32>,
        mask: Vec<u32>,
        rows: usize,
        seq: usize,
    ) -> candle_core::Result<CTensor> {
        let ids = CTensor::from_vec(ids, (rows, seq), &self.device)?;
        let types = CTensor::from_vec(types, (rows, seq), &self.device)?;
        let mask = CTensor::from_vec(mask, (rows, seq), &self.device)?;
        let hidden = self.model.forward(&ids, &types, Some(&mask))?; // [rows, seq, hidden]
        let pooled = match self.pooling {
            Pooling::Cls => hidden.narrow(1, 0, 1)?.squeeze(1)?,
            Pooling::Mean => {
                let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?; // [rows, seq, 1]
                let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
                let counts = mask.sum(1)?.clamp(1e-9f32, f32::MAX)?;
                summed.broadcast_div(&counts)?
            }
        };
        if !self.normalize {
            return Ok(pooled);
        }
        let norms = pooled
            .sqr()?
            .sum_keepdim(D::Minus1)?
            .sqrt()?
            .clamp(1e-12f32, f32::MAX)?;
        pooled.broadcast_div(&norms)
    }
}
