//! TEMPORARY interface stand-in (the real crate is being written on branch `transforms`).
use std::sync::Arc;

pub type Row = serde_json::Map<String, serde_json::Value>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Pre,
    Post,
}

pub struct Context<'a> {
    pub inputs: Option<&'a [Row]>,
}

pub trait Transform: Send + Sync + 'static {
    fn name(&self) -> &str;
    fn apply(&self, rows: &mut [Row], ctx: &Context<'_>) -> Result<(), TransformError>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Input,
    Limit,
    Fault,
}

#[derive(Debug, thiserror::Error)]
#[error("transform step {position} ({step}) failed on row {row:?}: {message}")]
pub struct TransformError {
    pub step: String,
    pub position: usize,
    pub row: Option<usize>,
    pub kind: ErrorKind,
    pub message: String,
}

pub struct Chain {
    steps: Vec<Box<dyn Transform>>,
}

impl Chain {
    pub fn empty() -> Chain {
        Chain { steps: Vec::new() }
    }
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
    pub fn len(&self) -> usize {
        self.steps.len()
    }
    pub fn apply(&self, rows: &mut [Row], ctx: &Context<'_>) -> Result<(), TransformError> {
        for s in &self.steps {
            s.apply(rows, ctx)?;
        }
        Ok(())
    }
}

pub type Factory =
    Arc<dyn Fn(&serde_json::Value) -> Result<Box<dyn Transform>, String> + Send + Sync>;

#[derive(Clone, Default)]
pub struct Registry {
    factories: Vec<(String, Factory)>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn register(&mut self, name: &str, factory: Factory) {
        self.factories.push((name.to_string(), factory));
    }
    pub fn names(&self) -> Vec<String> {
        self.factories.iter().map(|f| f.0.clone()).collect()
    }
}

pub struct BuildOptions<'a> {
    pub stage: Stage,
    pub base_dir: &'a std::path::Path,
    pub registry: &'a Registry,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BuildError(String);

pub fn build_chain(
    steps: &[serde_json::Value],
    _opts: &BuildOptions<'_>,
) -> Result<Chain, BuildError> {
    if steps.is_empty() {
        Ok(Chain::empty())
    } else {
        Err(BuildError("stub".into()))
    }
}
