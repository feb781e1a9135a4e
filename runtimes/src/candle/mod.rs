//! Candle adapter for `format: safetensors` models. The manifest's `architecture` section says
//! what network to build around the weights:
//!
//! - `kind: feed-forward` ([`ffn`]): dense layers, activations, layer norm, embeddings for
//!   categorical inputs, softmax/sigmoid heads;
//! - `kind: bert-sentence-embedding` ([`bert`]): a BERT encoder (candle-transformers) with its
//!   tokenizer, mean pooling and L2 normalisation, taking BYTES (UTF-8 text) input.
//!
//! One loaded network is shared by all compute threads (`&self`); each call runs inside this
//! model's own rayon pool, so the engine never uses more threads than `intra_op_threads`.

mod bert;
mod ffn;

use crate::device::Device as FerryDevice;
use crate::{Engine, LoadOptions, Runtime, RuntimeError, Signature, Tensor};
use candle_core::Device;
use std::path::Path;

const ENGINE: Engine = Engine::Candle;

/// The `architecture.kind` values this engine builds.
pub const KINDS: [&str; 2] = [ffn::KIND, bert::KIND];

enum Network {
    FeedForward(ffn::FeedForward),
    Bert(Box<bert::SentenceEmbedder>),
}

pub struct CandleRuntime {
    network: Network,
    signature: Signature,
    pool: rayon::ThreadPool,
    device: FerryDevice,
}

fn load_err(e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::load(ENGINE, e)
}

fn run_err(e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::inference(ENGINE, e)
}

fn candle_device(device: FerryDevice) -> Result<Device, RuntimeError> {
    match device {
        FerryDevice::Cpu => Ok(Device::Cpu),
        #[cfg(feature = "cuda")]
        FerryDevice::Cuda(n) => Device::new_cuda(n).map_err(load_err),
        #[cfg(not(feature = "cuda"))]
        FerryDevice::Cuda(_) => Err(RuntimeError::NotCompiled {
            engine: "candle (CUDA)",
            feature: "cuda",
        }),
    }
}

impl CandleRuntime {
    /// Builds the network `architecture` describes from the weights in `dir/artifact` (and,
    /// for BERT, the config and tokenizer files next to it), checks tensor names and shapes
    /// against the spec and the signature, and places it on `options.device`.
    pub fn load(
        dir: &Path,
        artifact: &str,
        architecture: &serde_json::Value,
        signature: &Signature,
        options: &LoadOptions,
    ) -> Result<CandleRuntime, RuntimeError> {
        let device = candle_device(options.device)?;
        let kind = architecture
            .get("kind")
            .and_then(|k| k.as_str())
            .ok_or_else(|| {
                load_err(format!(
                    "model.yaml `architecture.kind` is missing; format `safetensors` needs one of {KINDS:?}"
                ))
            })?;
        let network = match kind {
            ffn::KIND => Network::FeedForward(ffn::FeedForward::load(
                &dir.join(artifact),
                architecture,
                signature,
                &device,
            )?),
            bert::KIND => Network::Bert(Box::new(bert::SentenceEmbedder::load(
                dir,
                artifact,
                architecture,
                signature,
                &device,
            )?)),
            other => {
                return Err(load_err(format!(
                    "model.yaml `architecture.kind` is {other:?}; the Candle engine builds {KINDS:?}"
                )));
            }
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(options.intra_op_threads.max(1))
            .thread_name(|i| format!("ferry-candle-{i}"))
            .build()
            .map_err(load_err)?;
        Ok(CandleRuntime {
            network,
            signature: signature.clone(),
            pool,
            device: options.device,
        })
    }
}

impl Runtime for CandleRuntime {
    fn engine(&self) -> Engine {
        ENGINE
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn device(&self) -> FerryDevice {
        self.device
    }

    fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, RuntimeError> {
        self.pool.install(|| match &self.network {
            Network::FeedForward(net) => net.run(inputs, &self.signature),
            Network::Bert(net) => net.run(inputs, &self.signature),
        })
    }
}
