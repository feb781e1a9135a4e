//! Compiling step configs (YAML/JSON, one single-key map per step) into a [`Chain`].

use std::panic::{AssertUnwindSafe, catch_unwind};

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::post::{Bound, Calibrate, Rename, Select, Threshold, TopK};
use crate::pre::{Affine, Bucketize, CategoryIndex, Clip, Derive, FillMissing, Log1p, OneHot};
use crate::script::Script;
use crate::util::{PerRow, show};
use crate::{
    Applied, BuildError, BuildOptions, Chain, Context, Frame, FrameContext, Row, Stage, Transform,
    TransformError,
};

/// Every step: its name, the stages it may run in, and a config example for error messages.
const STEPS: &[(&str, &[Stage], &str)] = &[
    (
        "fill_missing",
        &[Stage::Pre],
        "fill_missing: {amount: 0, country: US}",
    ),
    (
        "standardize",
        &[Stage::Pre],
        "standardize: {amount: {mean: 10.0, std: 2.0}}",
    ),
    (
        "scale",
        &[Stage::Pre],
        "scale: {amount: {factor: 0.01, offset: 0}}",
    ),
    (
        "min_max",
        &[Stage::Pre],
        "min_max: {age: {min: 0, max: 100}}",
    ),
    ("clip", &[Stage::Pre], "clip: {amount: {min: 0, max: 1000}}"),
    ("log1p", &[Stage::Pre], "log1p: [amount, spend]"),
    (
        "bucketize",
        &[Stage::Pre],
        "bucketize: {field: age, boundaries: [18, 30, 50], output: age_bucket}",
    ),
    (
        "one_hot",
        &[Stage::Pre],
        "one_hot: {field: country, categories: [US, DE, FR], prefix: country_, drop_original: false}",
    ),
    (
        "category_index",
        &[Stage::Pre],
        "category_index: {field: country, map: {US: 0, DE: 1}, default: -1, output: country_idx}",
    ),
    (
        "derive",
        &[Stage::Pre],
        "derive: {name: amount_per_visit, op: divide, args: [amount, user_stats.visits_7d], on_zero: 0}",
    ),
    (
        "threshold",
        &[Stage::Post],
        "threshold: {field: probabilities, index: 1, threshold: 0.5, labels: [no, yes], output: label}",
    ),
    (
        "top_k",
        &[Stage::Post],
        "top_k: {field: probabilities, k: 3, labels: [a, b, c, d], output: top}",
    ),
    (
        "calibrate",
        &[Stage::Post],
        "calibrate: {field: score, table: [[0.0, 0.0], [0.5, 0.3], [1.0, 1.0]], output: calibrated}",
    ),
    ("rename", &[Stage::Post], "rename: {probabilities: scores}"),
    ("select", &[Stage::Post], "select: [label, score]"),
    ("cap", &[Stage::Post], "cap: {price: 100}"),
    ("floor", &[Stage::Post], "floor: {price: 0}"),
    (
        "script",
        &[Stage::Pre, Stage::Post],
        "script: {file: rules.rhai, max_operations: 100000}",
    ),
    (
        "rust",
        &[Stage::Pre, Stage::Post],
        "rust: {name: cap_by_country, params: {}}",
    ),
];

/// Names of the steps allowed in `stage`, in documentation order.
pub fn step_names(stage: Stage) -> Vec<&'static str> {
    STEPS
        .iter()
        .filter(|(_, stages, _)| stages.contains(&stage))
        .map(|(name, _, _)| *name)
        .collect()
}

/// Compiles `steps` (each a single-key map `{step_name: config}`) for `opts.stage`. Scripts
/// are read and compiled here, Rust factories called here; nothing is compiled per request.
pub fn build_chain(steps: &[Value], opts: &BuildOptions<'_>) -> Result<Chain, BuildError> {
    let mut built: Vec<Box<dyn Transform>> = Vec::with_capacity(steps.len());
    for (i, step) in steps.iter().enumerate() {
        let fail = |name: &str, message: String| BuildError {
            stage: opts.stage,
            position: i + 1,
            step: name.to_owned(),
            message,
        };
        let obj = match step {
            Value::Object(obj) if obj.len() == 1 => obj,
            _ => {
                return Err(fail(
                    "?",
                    format!(
                        "each step is a map with exactly one key, the step name (e.g. `- log1p: [amount]`); got {}",
                        show(step)
                    ),
                ));
            }
        };
        let Some((name, cfg)) = obj.iter().next() else {
            continue;
        };
        built.push(build_step(name, cfg, opts).map_err(|m| fail(name, m))?);
    }
    Ok(Chain::from_transforms(built))
}

fn build_step(
    name: &str,
    cfg: &Value,
    opts: &BuildOptions<'_>,
) -> Result<Box<dyn Transform>, String> {
    let stage = opts.stage;
    let Some((_, stages, example)) = STEPS.iter().find(|(n, _, _)| *n == name) else {
        return Err(format!(
            "unknown step `{name}`; steps available in the {stage} stage: {}",
            step_names(stage).join(", ")
        ));
    };
    if !stages.contains(&stage) {
        let other = if stage == Stage::Pre {
            Stage::Post
        } else {
            Stage::Pre
        };
        return Err(format!(
            "`{name}` is a {other}-stage step and cannot run in the {stage} stage; steps available in the {stage} stage: {}",
            step_names(stage).join(", ")
        ));
    }
    fn cfg_of<T: DeserializeOwned>(cfg: &Value, example: &str) -> Result<T, String> {
        T::deserialize(cfg).map_err(|e| format!("{e}; expected e.g. `{example}`"))
    }
    fn per_row<S: crate::util::RowStep>(
        r: Result<S, String>,
    ) -> Result<Box<dyn Transform>, String> {
        r.map(|s| Box::new(PerRow(s)) as Box<dyn Transform>)
    }
    match name {
        "fill_missing" => per_row(FillMissing::new(cfg_of(cfg, example)?)),
        "standardize" => per_row(Affine::standardize(cfg_of(cfg, example)?)),
        "scale" => per_row(Affine::scale(cfg_of(cfg, example)?)),
        "min_max" => per_row(Affine::min_max(cfg_of(cfg, example)?)),
        "clip" => per_row(Clip::new(cfg_of(cfg, example)?)),
        "log1p" => per_row(Log1p::new(cfg_of(cfg, example)?)),
        "bucketize" => per_row(Bucketize::new(cfg_of(cfg, example)?)),
        "one_hot" => per_row(OneHot::new(cfg_of(cfg, example)?)),
        "category_index" => per_row(CategoryIndex::new(cfg_of(cfg, example)?)),
        "derive" => per_row(Derive::new(cfg_of(cfg, example)?)),
        "threshold" => per_row(Threshold::new(cfg_of(cfg, example)?)),
        "top_k" => per_row(TopK::new(cfg_of(cfg, example)?)),
        "calibrate" => per_row(Calibrate::new(cfg_of(cfg, example)?)),
        "rename" => per_row(Rename::new(cfg_of(cfg, example)?)),
        "select" => per_row(Select::new(cfg_of(cfg, example)?)),
        "cap" => per_row(Bound::new("cap", true, cfg_of(cfg, example)?)),
        "floor" => per_row(Bound::new("floor", false, cfg_of(cfg, example)?)),
        "script" => Script::build(cfg_of(cfg, example)?, stage, opts.base_dir)
            .map(|s| Box::new(s) as Box<dyn Transform>),
        "rust" => build_rust(cfg_of(cfg, example)?, opts),
        _ => Err(format!(
            "step `{name}` is listed but not built; this is a bug"
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RustConfig {
    name: String,
    #[serde(default = "empty_params")]
    params: Value,
}

fn empty_params() -> Value {
    Value::Object(Row::new())
}

fn build_rust(cfg: RustConfig, opts: &BuildOptions<'_>) -> Result<Box<dyn Transform>, String> {
    let Some(factory) = opts.registry.get(&cfg.name) else {
        let names = opts.registry.names();
        let known = if names.is_empty() {
            "none are registered in this binary".to_owned()
        } else {
            format!("registered: {}", names.join(", "))
        };
        return Err(format!("no Rust transform named `{}` ({known})", cfg.name));
    };
    let label = format!("rust:{}", cfg.name);
    let inner = catch_unwind(AssertUnwindSafe(|| factory(&cfg.params)))
        .map_err(|p| format!("the factory panicked: {}", panic_message(&*p)))?
        .map_err(|e| format!("invalid params for `{}`: {e}", cfg.name))?;
    Ok(Box::new(Plugin { label, inner }))
}

/// A registered Rust transform, reported under `rust:<name>`; a panic in it becomes a Fault
/// instead of taking down the worker thread.
struct Plugin {
    label: String,
    inner: Box<dyn Transform>,
}

impl Transform for Plugin {
    fn name(&self) -> &str {
        &self.label
    }

    fn apply(&self, rows: &mut [Row], ctx: &Context<'_>) -> Result<(), TransformError> {
        catch_unwind(AssertUnwindSafe(|| self.inner.apply(rows, ctx))).unwrap_or_else(|p| {
            Err(TransformError::fault(
                None,
                format!("the transform panicked: {}", panic_message(&*p)),
            ))
        })
    }
    fn has_column_form(&self) -> bool {
        self.inner.has_column_form()
    }

    fn apply_frame(
        &self,
        frame: &mut Frame,
        ctx: &FrameContext<'_>,
    ) -> Result<Applied, TransformError> {
        catch_unwind(AssertUnwindSafe(|| self.inner.apply_frame(frame, ctx))).unwrap_or_else(|p| {
            Err(TransformError::fault(
                None,
                format!("the transform panicked: {}", panic_message(&*p)),
            ))
        })
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_owned()
    }
}
