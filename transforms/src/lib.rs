//! Transform stage of a ferry endpoint: the steps that run on request rows before the model
//! (pre) and on output rows after it (post).
//!
//! Steps are pluggable three ways behind one [`Transform`] trait:
//! 1. built-in declarative steps configured in YAML (`standardize`, `one_hot`, `threshold`, …),
//! 2. sandboxed [Rhai](https://rhai.rs) scripts (`script: {file: rules.rhai}`),
//! 3. Rust transforms a team registers in a [`Registry`] when it builds its own ferry binary.
//!
//! [`build_chain`] compiles a list of step configs once (config load / reload); the resulting
//! [`Chain`] is cheap to clone and runs on every request. See `transforms/README.md` for every
//! step's YAML shape.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

mod build;
mod frame;
mod post;
mod pre;
mod script;
mod util;

pub use build::{build_chain, step_names};
pub use frame::Frame;

/// One row: a request/feature row in the pre stage, a model output row in the post stage.
pub type Row = serde_json::Map<String, serde_json::Value>;

/// Which side of the model a chain runs on. Some steps exist only on one side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Pre,
    Post,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Pre => "pre",
            Stage::Post => "post",
        })
    }
}

/// What a step may read besides the rows it rewrites.
#[derive(Debug, Clone, Copy, Default)]
pub struct Context<'a> {
    /// Post stage: the request rows (after pre-transforms), aligned with `rows`. None in Pre.
    pub inputs: Option<&'a [Row]>,
}

impl<'a> Context<'a> {
    /// Context for the pre stage.
    pub fn pre() -> Context<'static> {
        Context { inputs: None }
    }

    /// Context for the post stage: `inputs[i]` is the request row behind output row `i`.
    pub fn post(inputs: &'a [Row]) -> Context<'a> {
        Context {
            inputs: Some(inputs),
        }
    }

    /// The request row aligned with output row `i`, if there is one.
    pub fn input(&self, i: usize) -> Option<&'a Row> {
        self.inputs.and_then(|rows| rows.get(i))
    }
}

/// What a step may read besides the frame it rewrites (the column form of [`Context`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct FrameContext<'a> {
    /// Post stage: the request columns (after pre-transforms), row-aligned. None in Pre.
    pub inputs: Option<&'a Frame>,
}

/// Whether a step rewrote a frame as its row form would have rewritten the rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Applied {
    Done,
    /// These columns need the row form (e.g. nulls the row form reports, a script); the frame
    /// may be partly rewritten and the caller runs the whole chain on rows instead.
    NeedsRows,
}

/// A step of a chain.
///
/// A step has a row form ([`Transform::apply`], the reference semantics, used for JSON
/// requests) and a column form ([`Transform::apply_frame`], used where requests and files are
/// already columns: batch over Parquet). The column form must give exactly what the row form
/// gives, or answer [`Applied::NeedsRows`]; the default always does.
pub trait Transform: Send + Sync + 'static {
    /// Label used in errors and metrics, e.g. "standardize", "script rules.rhai", "rust:cap_by_country".
    fn name(&self) -> &str;
    /// Rewrites rows in place (may add/remove fields). Must not panic on any input.
    fn apply(&self, rows: &mut [Row], ctx: &Context<'_>) -> Result<(), TransformError>;
    /// Whether [`Transform::apply_frame`] is implemented (it may still answer `NeedsRows` for
    /// some columns). Callers skip the column path for chains with a step that has none.
    fn has_column_form(&self) -> bool {
        false
    }
    /// Rewrites whole columns in place. Must not panic on any input.
    fn apply_frame(
        &self,
        _frame: &mut Frame,
        _ctx: &FrameContext<'_>,
    ) -> Result<Applied, TransformError> {
        Ok(Applied::NeedsRows)
    }
}

/// Who is to blame for a failed step; decides the HTTP status class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The row does not fit the step (missing field, wrong type): a client mistake, 4xx.
    Input,
    /// A script ran past one of its limits (operations, call depth, data size): 5xx.
    Limit,
    /// A script or plugin failed (runtime error, bad return value, panic): 5xx.
    Fault,
}

/// A step failed on a row. `step` and `position` are filled in by [`Chain::apply`]; a
/// [`Transform`] implementation builds one with [`TransformError::input`],
/// [`TransformError::limit`] or [`TransformError::fault`].
#[derive(Debug, Clone, thiserror::Error)]
#[error("transform step {position} ({step}) failed{}: {message}", RowSuffix(*.row))]
pub struct TransformError {
    /// The step's label ([`Transform::name`]).
    pub step: String,
    /// 1-based position of the step in its chain.
    pub position: usize,
    /// Index of the failing row in the request, when one row is to blame.
    pub row: Option<usize>,
    pub kind: ErrorKind,
    pub message: String,
}

struct RowSuffix(Option<usize>);

impl fmt::Display for RowSuffix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(row) => write!(f, " on row {row}"),
            None => Ok(()),
        }
    }
}

impl TransformError {
    pub fn new(kind: ErrorKind, row: Option<usize>, message: impl Into<String>) -> Self {
        TransformError {
            step: String::new(),
            position: 0,
            row,
            kind,
            message: message.into(),
        }
    }

    /// The row does not fit the step (client mistake).
    pub fn input(row: usize, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Input, Some(row), message)
    }

    /// A limit was exceeded while processing `row`.
    pub fn limit(row: usize, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Limit, Some(row), message)
    }

    /// The step itself failed on `row`.
    pub fn fault(row: Option<usize>, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Fault, row, message)
    }

    /// True when the caller sent rows the step cannot use (answer 4xx, not 5xx).
    pub fn is_client_error(&self) -> bool {
        self.kind == ErrorKind::Input
    }
}

/// A compiled step with the label the chain reports it under.
struct Step {
    label: String,
    transform: Box<dyn Transform>,
}

/// A compiled, ordered list of steps. Cloning shares the compiled steps.
#[derive(Clone)]
pub struct Chain {
    steps: Arc<[Step]>,
}

impl fmt::Debug for Chain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.step_names()).finish()
    }
}

impl Default for Chain {
    fn default() -> Self {
        Chain::empty()
    }
}

impl Chain {
    /// A chain that leaves rows untouched.
    pub fn empty() -> Chain {
        Chain {
            steps: Arc::from(Vec::new()),
        }
    }

    /// A chain from already-built transforms, labelled by their [`Transform::name`].
    pub fn from_transforms(transforms: Vec<Box<dyn Transform>>) -> Chain {
        let steps: Vec<Step> = transforms
            .into_iter()
            .map(|transform| Step {
                label: transform.name().to_owned(),
                transform,
            })
            .collect();
        Chain {
            steps: Arc::from(steps),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// Step labels in order, for metrics and logs.
    pub fn step_names(&self) -> Vec<&str> {
        self.steps.iter().map(|s| s.label.as_str()).collect()
    }

    /// Runs every step in order over all rows. Stops at the first failing step; the rows are
    /// then partly transformed and should be discarded. The chain itself stays usable.
    pub fn apply(&self, rows: &mut [Row], ctx: &Context<'_>) -> Result<(), TransformError> {
        for (i, step) in self.steps.iter().enumerate() {
            step.transform.apply(rows, ctx).map_err(|mut e| {
                e.step.clone_from(&step.label);
                e.position = i + 1;
                e
            })?;
        }
        Ok(())
    }

    /// Whether every step has a column form.
    pub fn has_column_form(&self) -> bool {
        self.steps.iter().all(|s| s.transform.has_column_form())
    }

    /// [`Chain::apply`] over columns: every step's column form in order. `NeedsRows` as soon
    /// as one step needs rows (the frame is then partly rewritten: discard it).
    pub fn apply_frame(
        &self,
        frame: &mut Frame,
        ctx: &FrameContext<'_>,
    ) -> Result<Applied, TransformError> {
        for (i, step) in self.steps.iter().enumerate() {
            let applied = step.transform.apply_frame(frame, ctx).map_err(|mut e| {
                e.step.clone_from(&step.label);
                e.position = i + 1;
                e
            })?;
            if applied == Applied::NeedsRows {
                return Ok(Applied::NeedsRows);
            }
        }
        Ok(Applied::Done)
    }
}

/// Builds a Rust transform from the `params` of its `rust:` step.
pub type Factory =
    Arc<dyn Fn(&serde_json::Value) -> Result<Box<dyn Transform>, String> + Send + Sync>;

/// Rust transforms registered by a team that builds its own ferry binary; referenced from
/// config as `rust: {name: <registered name>, params: {...}}`.
#[derive(Clone, Default)]
pub struct Registry {
    factories: BTreeMap<String, Factory>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("names", &self.names())
            .finish()
    }
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers (or replaces) the factory for `name`.
    pub fn register(&mut self, name: &str, factory: Factory) {
        self.factories.insert(name.to_owned(), factory);
    }

    /// Registered names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.factories.keys().cloned().collect()
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Factory> {
        self.factories.get(name)
    }
}

/// Where and how [`build_chain`] compiles steps.
#[derive(Clone, Copy)]
pub struct BuildOptions<'a> {
    pub stage: Stage,
    /// Relative `script: {file: …}` paths resolve against this directory (the config file's).
    pub base_dir: &'a Path,
    pub registry: &'a Registry,
}

/// A step config that cannot be compiled. The message says which key is wrong and how to fix it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{stage} transform step {position} ({step}): {message}")]
pub struct BuildError {
    pub stage: Stage,
    /// 1-based position of the step in its list.
    pub position: usize,
    /// The step name as written in the config (`?` when it could not be read).
    pub step: String,
    pub message: String,
}

#[cfg(test)]
mod tests;
