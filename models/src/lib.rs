//! Model versions, from the registry to the compute threads: the `ModelManager` resolves the
//! references the server serves, fetches and verifies versions, places them on a device,
//! loads them into an engine (`ferry-runtimes`), warms them up, swaps new versions in and
//! retires old ones; each loaded version gets a `ComputeQueue` (bounded queue, OS compute
//! threads, dynamic batcher — see `scheduler/README.md`).
//!
//! No HTTP here: callers (the server's handlers, the endpoint pipeline, batch mode) map
//! `LookupError`, `ControlError` and `ScheduleError` to their own vocabulary.

pub mod config;
pub mod manager;
pub mod metrics;
mod onnx;
pub mod placement;
pub mod scheduler;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;

pub use config::{BatchingConfig, ModelEntry, ModelSettings, ModelsConfig};
pub use manager::{ControlError, IndexEntry, LoadedModel, LookupError, ModelManager, SyncOutcome};
pub use metrics::ModelMetrics;
pub use onnx::init_onnx_runtime;
pub use placement::place;
pub use scheduler::{BatchPolicy, ComputeQueue, QueueOptions, ScheduleError};
