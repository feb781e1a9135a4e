//! `script` steps: business rules written in Rhai, compiled once at build and run per row in a
//! sandbox (no file, network or module access; operation, call-depth and data-size limits).

use std::cell::Cell;
use std::path::Path;
use std::time::{Duration, Instant};

use rhai::{AST, Array, CallFnOptions, Dynamic, Engine, EvalAltResult, Map, Scope};
use serde::Deserialize;
use serde_json::{Number, Value};

use crate::{Context, Row, Stage, Transform, TransformError};

/// JSON nesting deeper than this is refused on the way in and out of a script. serde_json
/// stops parsing at 128, so real requests never reach it; it keeps a script-built deep
/// structure from exhausting the native stack during conversion.
const MAX_DEPTH: usize = 128;

pub(crate) const DEFAULT_MAX_OPERATIONS: u64 = 100_000;
pub(crate) const DEFAULT_MAX_CALL_LEVELS: usize = 16;
/// Rhai's evaluator uses a lot of native stack per call level: a debug build on a 2 MiB thread
/// survives 64 levels but not 128, so the ceiling keeps a 2x margin.
pub(crate) const MAX_CALL_LEVELS_CEILING: usize = 32;
pub(crate) const DEFAULT_MAX_STRING_SIZE: usize = 65_536;
pub(crate) const DEFAULT_MAX_ARRAY_SIZE: usize = 10_000;
pub(crate) const DEFAULT_MAX_MAP_SIZE: usize = 10_000;
/// Backstop for rows whose operations are individually expensive (sorting big arrays, say):
/// the operation limit alone does not bound wall time.
pub(crate) const DEFAULT_MAX_TIME_MS: u64 = 1_000;
/// The clock is read every this many operations, keeping the check off the per-op cost.
const CLOCK_EVERY_OPS: u64 = 256;

thread_local! {
    /// Deadline of the script call running on this thread; the engine's progress callback is
    /// shared by all threads, so the per-call state lives here.
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ScriptConfig {
    file: Option<String>,
    source: Option<String>,
    name: Option<String>,
    max_operations: Option<u64>,
    max_call_levels: Option<usize>,
    max_string_size: Option<usize>,
    max_array_size: Option<usize>,
    max_map_size: Option<usize>,
    max_time_ms: Option<u64>,
}

pub(crate) struct Script {
    label: String,
    engine: Engine,
    ast: AST,
    stage: Stage,
    max_operations: u64,
    max_time: Duration,
    sizes: Sizes,
}

/// Size limits, also applied to the row a script returns: Rhai checks sizes on most but not
/// all writes (inserting into a map by index is not checked), so the result is checked again.
#[derive(Clone, Copy)]
struct Sizes {
    string: usize,
    array: usize,
    map: usize,
}

/// Why a script's return value could not become a row.
enum Unusable {
    TooLarge(String),
    Invalid(String),
}

impl Script {
    pub(crate) fn build(cfg: ScriptConfig, stage: Stage, base_dir: &Path) -> Result<Self, String> {
        let (source, origin, default_name) = match (&cfg.file, &cfg.source) {
            (Some(file), None) => {
                let path = base_dir.join(file);
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| format!("cannot read script file {}: {e}", path.display()))?;
                (text, format!("file {}", path.display()), file.clone())
            }
            (None, Some(src)) => {
                let name = cfg.name.clone().unwrap_or_else(|| "inline".to_owned());
                (src.clone(), format!("inline script `{name}`"), name)
            }
            _ => {
                return Err(
                    "set exactly one of `file` (path to a .rhai file) or `source` (the script text)"
                        .into(),
                );
            }
        };
        let name = cfg.name.unwrap_or(default_name);
        let label = format!("script {name}");

        let max_operations =
            positive(cfg.max_operations, DEFAULT_MAX_OPERATIONS, "max_operations")?;
        let max_call_levels = positive(
            cfg.max_call_levels,
            DEFAULT_MAX_CALL_LEVELS,
            "max_call_levels",
        )?;
        if max_call_levels > MAX_CALL_LEVELS_CEILING {
            return Err(format!(
                "`max_call_levels` is at most {MAX_CALL_LEVELS_CEILING}, got {max_call_levels}"
            ));
        }
        let max_string_size = positive(
            cfg.max_string_size,
            DEFAULT_MAX_STRING_SIZE,
            "max_string_size",
        )?;
        let max_array_size =
            positive(cfg.max_array_size, DEFAULT_MAX_ARRAY_SIZE, "max_array_size")?;
        let max_map_size = positive(cfg.max_map_size, DEFAULT_MAX_MAP_SIZE, "max_map_size")?;
        let max_time_ms = positive(cfg.max_time_ms, DEFAULT_MAX_TIME_MS, "max_time_ms")?;

        let mut engine = Engine::new();
        engine
            .set_max_operations(max_operations)
            .set_max_call_levels(max_call_levels)
            .set_max_string_size(max_string_size)
            .set_max_array_size(max_array_size)
            .set_max_map_size(max_map_size)
            .set_max_expr_depths(64, 32)
            // The interner sits behind a lock shared by every thread running this script.
            .set_max_strings_interned(0)
            // A typo'd variable is a build error rather than a silent `()` at request time.
            .set_strict_variables(true)
            // `eval` would compile new code per request, outside the checks done here.
            .disable_symbol("eval");
        engine.on_progress(|ops| {
            if ops % CLOCK_EVERY_OPS != 0 {
                return None;
            }
            let late = DEADLINE.with(|d| d.get().is_some_and(|t| Instant::now() > t));
            late.then(|| Dynamic::from("max_time_ms"))
        });
        let print_label = label.clone();
        engine.on_print(move |s| {
            tracing::info!(target: "ferry_transforms::script", script = %print_label, "{s}");
        });
        let debug_label = label.clone();
        engine.on_debug(move |s, _, pos| {
            tracing::debug!(target: "ferry_transforms::script", script = %debug_label, %pos, "{s}");
        });

        let ast = engine
            .compile(&source)
            .map_err(|e| format!("syntax error in {origin}: {e}"))?;
        let params = match stage {
            Stage::Pre => 1,
            Stage::Post => 2,
        };
        let signature = match stage {
            Stage::Pre => "fn transform(row)",
            Stage::Post => "fn transform(row, input)",
        };
        if !ast
            .iter_functions()
            .any(|f| f.name == "transform" && f.params.len() == params)
        {
            return Err(format!(
                "{origin} must define `{signature}` for the {stage} stage, returning the new row map"
            ));
        }
        Ok(Script {
            label,
            engine,
            ast,
            stage,
            max_operations,
            max_time: Duration::from_millis(max_time_ms),
            sizes: Sizes {
                string: max_string_size,
                array: max_array_size,
                map: max_map_size,
            },
        })
    }

    fn run_row(&self, i: usize, row: &mut Row, ctx: &Context<'_>) -> Result<(), TransformError> {
        let arg = row_to_dynamic(row).map_err(|m| TransformError::input(i, m))?;
        let input = match (self.stage, ctx.input(i)) {
            (Stage::Post, Some(r)) => {
                Some(row_to_dynamic(r).map_err(|m| TransformError::input(i, m))?)
            }
            (Stage::Post, None) => Some(Dynamic::UNIT),
            (Stage::Pre, _) => None,
        };
        let mut scope = Scope::new();
        // Top-level statements are not re-run per row; only the function is called.
        let opts = CallFnOptions::new().eval_ast(false).rewind_scope(false);
        DEADLINE.with(|d| d.set(Some(Instant::now() + self.max_time)));
        let result = match input {
            None => self.engine.call_fn_with_options::<Dynamic>(
                opts,
                &mut scope,
                &self.ast,
                "transform",
                (arg,),
            ),
            Some(input) => self.engine.call_fn_with_options::<Dynamic>(
                opts,
                &mut scope,
                &self.ast,
                "transform",
                (arg, input),
            ),
        };
        DEADLINE.with(|d| d.set(None));
        let out = result.map_err(|e| self.runtime_error(i, &e))?;
        let type_name = out.type_name();
        let Some(map) = out.flatten().try_cast::<Map>() else {
            return Err(TransformError::fault(
                Some(i),
                format!("transform returned {type_name}, expected a map (object) for the new row"),
            ));
        };
        *row = map_to_row(map, 0, &self.sizes).map_err(|e| match e {
            Unusable::TooLarge(m) => TransformError::limit(
                i,
                format!("transform returned a row past a size limit: {m}"),
            ),
            Unusable::Invalid(m) => {
                TransformError::fault(Some(i), format!("transform returned an unusable row: {m}"))
            }
        })?;
        Ok(())
    }

    fn runtime_error(&self, i: usize, err: &EvalAltResult) -> TransformError {
        let pos = err.unwrap_inner().position();
        let at = if pos.is_none() {
            String::new()
        } else {
            format!(" at {pos}")
        };
        match err.unwrap_inner() {
            EvalAltResult::ErrorTooManyOperations(_) => TransformError::limit(
                i,
                format!(
                    "script ran past max_operations ({}){at}; simplify the rule or raise the limit",
                    self.max_operations
                ),
            ),
            EvalAltResult::ErrorTerminated(..) => TransformError::limit(
                i,
                format!(
                    "script ran past max_time_ms ({} ms){at}; simplify the rule or raise the limit",
                    self.max_time.as_millis()
                ),
            ),
            EvalAltResult::ErrorStackOverflow(_) => TransformError::limit(
                i,
                format!("script ran past max_call_levels (function calls nested too deeply){at}"),
            ),
            EvalAltResult::ErrorDataTooLarge(what, _) => {
                TransformError::limit(i, format!("script data exceeded its limit: {what}{at}"))
            }
            EvalAltResult::ErrorTooManyVariables(_) | EvalAltResult::ErrorTooManyModules(_) => {
                TransformError::limit(i, format!("script ran past a limit: {err}"))
            }
            _ => TransformError::fault(Some(i), format!("script error: {err}")),
        }
    }
}

fn positive<T: Copy + PartialEq + Default + std::fmt::Display>(
    v: Option<T>,
    default: T,
    key: &str,
) -> Result<T, String> {
    match v {
        None => Ok(default),
        // Rhai reads 0 as "unlimited", which is never what a sandbox wants.
        Some(x) if x == T::default() => Err(format!("`{key}` must be at least 1")),
        Some(x) => Ok(x),
    }
}

impl Transform for Script {
    fn name(&self) -> &str {
        &self.label
    }

    fn apply(&self, rows: &mut [Row], ctx: &Context<'_>) -> Result<(), TransformError> {
        for (i, row) in rows.iter_mut().enumerate() {
            self.run_row(i, row, ctx)?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- JSON <-> Dynamic

fn row_to_dynamic(row: &Row) -> Result<Dynamic, String> {
    let mut map = Map::new();
    for (k, v) in row {
        map.insert(k.as_str().into(), to_dynamic(v, 1)?);
    }
    Ok(Dynamic::from_map(map))
}

fn to_dynamic(v: &Value, depth: usize) -> Result<Dynamic, String> {
    if depth > MAX_DEPTH {
        return Err(format!("row is nested more than {MAX_DEPTH} levels deep"));
    }
    Ok(match v {
        Value::Null => Dynamic::UNIT,
        Value::Bool(b) => Dynamic::from_bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Dynamic::from_int(i),
            // u64 above i64::MAX and all non-integers become floats.
            None => Dynamic::from_float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => Dynamic::from(s.clone()),
        Value::Array(items) => {
            let mut arr = Array::with_capacity(items.len());
            for e in items {
                arr.push(to_dynamic(e, depth + 1)?);
            }
            Dynamic::from_array(arr)
        }
        Value::Object(obj) => {
            let mut map = Map::new();
            for (k, e) in obj {
                map.insert(k.as_str().into(), to_dynamic(e, depth + 1)?);
            }
            Dynamic::from_map(map)
        }
    })
}

fn map_to_row(map: Map, depth: usize, sizes: &Sizes) -> Result<Row, Unusable> {
    if map.len() > sizes.map {
        return Err(Unusable::TooLarge(format!(
            "a map has {} entries, max_map_size is {}",
            map.len(),
            sizes.map
        )));
    }
    let mut row = Row::new();
    for (k, v) in map {
        let v = to_json(v, depth + 1, sizes).map_err(|e| match e {
            Unusable::TooLarge(m) => Unusable::TooLarge(format!("field `{k}`: {m}")),
            Unusable::Invalid(m) => Unusable::Invalid(format!("field `{k}`: {m}")),
        })?;
        row.insert(k.to_string(), v);
    }
    Ok(row)
}

/// Script values back to JSON. NaN and infinities have no JSON form and are refused (a Fault)
/// rather than silently turned into null.
fn to_json(d: Dynamic, depth: usize, sizes: &Sizes) -> Result<Value, Unusable> {
    if depth > MAX_DEPTH {
        return Err(Unusable::Invalid(format!(
            "value is nested more than {MAX_DEPTH} levels deep"
        )));
    }
    let d = d.flatten();
    if d.is_unit() {
        return Ok(Value::Null);
    }
    if let Ok(b) = d.as_bool() {
        return Ok(Value::Bool(b));
    }
    if let Ok(i) = d.as_int() {
        return Ok(Value::from(i));
    }
    if let Ok(x) = d.as_float() {
        return Number::from_f64(x)
            .map(Value::Number)
            .ok_or_else(|| Unusable::Invalid(format!("{x} is not a finite number")));
    }
    if let Ok(c) = d.as_char() {
        return Ok(Value::String(c.to_string()));
    }
    if d.is_string() {
        let s = d.into_string().unwrap_or_default();
        if s.len() > sizes.string {
            return Err(Unusable::TooLarge(format!(
                "a string has {} bytes, max_string_size is {}",
                s.len(),
                sizes.string
            )));
        }
        return Ok(Value::String(s));
    }
    let items: Array = if d.is_blob() {
        d.into_blob()
            .unwrap_or_default()
            .into_iter()
            .map(|b| Dynamic::from_int(b.into()))
            .collect()
    } else if d.is_array() {
        d.into_array().unwrap_or_default()
    } else {
        let type_name = d.type_name();
        return match d.try_cast::<Map>() {
            Some(map) => Ok(Value::Object(map_to_row(map, depth, sizes)?)),
            None => Err(Unusable::Invalid(format!(
                "a script value of type {type_name} has no JSON form"
            ))),
        };
    };
    if items.len() > sizes.array {
        return Err(Unusable::TooLarge(format!(
            "an array has {} elements, max_array_size is {}",
            items.len(),
            sizes.array
        )));
    }
    let mut out = Vec::with_capacity(items.len());
    for e in items {
        out.push(to_json(e, depth + 1, sizes)?);
    }
    Ok(Value::Array(out))
}
