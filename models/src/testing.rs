//! A model defined in code, for tests of everything above the engines (the manager, the
//! scheduler, the endpoint pipeline): its forward function is a closure over the input tensors.
//! Hand its runtime to `ModelManager::with_runtime_loader`.

use ferry_runtimes::{Engine, Runtime, RuntimeError, Signature, Tensor};
use std::sync::Arc;

/// The forward function: inputs in signature order (already validated), outputs in signature
/// order. Also called once at load with one row of zeros (the warm-up).
pub type Forward = dyn Fn(&[Tensor]) -> Result<Vec<Tensor>, RuntimeError> + Send + Sync;

/// A `Runtime` whose `run` is a closure.
pub struct FnRuntime {
    signature: Signature,
    forward: Arc<Forward>,
}

impl FnRuntime {
    pub fn new(signature: Signature, forward: Arc<Forward>) -> FnRuntime {
        FnRuntime { signature, forward }
    }
}

impl Runtime for FnRuntime {
    fn engine(&self) -> Engine {
        // Nothing above the engine layer branches on it; it only labels logs and metadata.
        Engine::Tract
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, RuntimeError> {
        (self.forward)(inputs)
    }
}
