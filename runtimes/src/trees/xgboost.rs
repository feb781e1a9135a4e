//! XGBoost's own model files (`Booster.save_model`): JSON (`model.json`) and UBJSON
//! (`model.ubj`), `gbtree` boosters with numerical splits.
//!
//! XGBoost stores `base_score` in the objective's output space (a probability for the
//! logistic objectives, a mean count for Poisson; checked against XGBoost 3.2, where it is a
//! bracketed list, one value per class for multiclass models; 1.x/2.x wrote a bare scalar);
//! the margin it starts from is that value mapped back (logit, log), except for
//! `binary:logitraw`, whose base score is already a margin.

use super::ensemble::{Objective, RawEnsemble, RawNode, RawTree, Test};
use serde_json::Value;

pub(crate) const OBJECTIVES: &str = "binary:logistic, binary:logitraw, multi:softprob, \
     multi:softmax, reg:squarederror, reg:logistic, count:poisson";

/// Parses a JSON or UBJSON document, whichever `bytes` is.
pub(crate) fn parse(bytes: &[u8]) -> Result<RawEnsemble, String> {
    let doc = if is_json(bytes) {
        serde_json::from_slice::<Value>(bytes).map_err(|e| format!("not valid JSON: {e}"))?
    } else {
        super::ubjson::parse(bytes).map_err(|e| format!("not valid UBJSON: {e}"))?
    };
    from_document(&doc)
}

/// JSON starts with `{` then whitespace or a quote; UBJSON's `{` is followed by a type marker.
fn is_json(bytes: &[u8]) -> bool {
    let mut it = bytes.iter().skip_while(|b| b.is_ascii_whitespace());
    it.next() == Some(&b'{')
        && matches!(
            it.next(),
            Some(b'"' | b' ' | b'\n' | b'\r' | b'\t' | b'}') | None
        )
}

fn get<'a>(v: &'a Value, path: &[&str]) -> Result<&'a Value, String> {
    let mut cur = v;
    for (i, key) in path.iter().enumerate() {
        cur = cur
            .get(key)
            .ok_or_else(|| format!("`{}` is missing", path[..=i].join(".")))?;
    }
    Ok(cur)
}

fn get_str<'a>(v: &'a Value, path: &[&str]) -> Result<&'a str, String> {
    get(v, path)?
        .as_str()
        .ok_or_else(|| format!("`{}` is not a string", path.join(".")))
}

/// XGBoost writes its parameters as strings ("3", "[5E-1]").
fn param_u64(v: &Value, path: &[&str]) -> Result<u64, String> {
    let raw = get(v, path)?;
    raw.as_u64()
        .or_else(|| raw.as_str().and_then(|s| s.trim().parse().ok()))
        .ok_or_else(|| format!("`{}` is not a whole number: {raw}", path.join(".")))
}

fn float_list(v: &Value, what: &str) -> Result<Vec<f64>, String> {
    let text = match v {
        Value::String(s) => s.trim().trim_start_matches('[').trim_end_matches(']'),
        Value::Number(n) => return Ok(vec![n.as_f64().unwrap_or(f64::NAN)]),
        other => return Err(format!("`{what}` is not a number: {other}")),
    };
    text.split(',')
        .map(|s| {
            s.trim()
                .parse::<f64>()
                .map_err(|_| format!("`{what}` is not a number: {v}"))
        })
        .collect()
}

fn array<'a>(tree: &'a Value, key: &str, n: usize) -> Result<&'a [Value], String> {
    let a = tree
        .get(key)
        .and_then(Value::as_array)
        .ok_or_else(|| format!("`{key}` is missing or not a list"))?;
    if a.len() != n {
        return Err(format!("`{key}` has {} entries for {n} nodes", a.len()));
    }
    Ok(a)
}

fn as_i64(v: &Value, key: &str) -> Result<i64, String> {
    v.as_i64()
        .or_else(|| v.as_bool().map(i64::from))
        .ok_or_else(|| format!("`{key}` holds {v}, not an integer"))
}

fn from_document(doc: &Value) -> Result<RawEnsemble, String> {
    let learner = get(doc, &["learner"])
        .map_err(|e| format!("{e}: not an XGBoost model saved with `save_model`"))?;
    let booster = get_str(learner, &["gradient_booster", "name"])?;
    if booster != "gbtree" {
        return Err(format!(
            "booster `{booster}` is not supported: only `gbtree` boosters (not dart or gblinear) run on the trees engine"
        ));
    }
    let params = get(learner, &["learner_model_param"])?;
    let n_features = param_u64(params, &["num_feature"])? as usize;
    let num_class = param_u64(params, &["num_class"])? as usize;
    if let Ok(targets) = param_u64(params, &["num_target"])
        && targets > 1
    {
        return Err(format!(
            "multi-target models ({targets} targets) are not supported"
        ));
    }
    let base_score = float_list(get(params, &["base_score"])?, "base_score")?;
    let objective = get_str(learner, &["objective", "name"])?;

    let logit = |p: f64| -> Result<f64, String> {
        if p > 0.0 && p < 1.0 {
            Ok((p / (1.0 - p)).ln())
        } else {
            Err(format!(
                "base_score {p} is not a probability, as {objective} needs"
            ))
        }
    };
    let scalar = || -> Result<f64, String> {
        match base_score[..] {
            [b] => Ok(b),
            _ => Err(format!(
                "{} base scores for a single-output objective",
                base_score.len()
            )),
        }
    };
    let (objective_kind, n_groups, base_margin) = match objective {
        "binary:logistic" => (
            Objective::BinaryLogistic { scale: 1.0 },
            1,
            vec![logit(scalar()?)?],
        ),
        "binary:logitraw" => (Objective::Identity, 1, vec![scalar()?]),
        "reg:logistic" => (Objective::Logistic, 1, vec![logit(scalar()?)?]),
        "reg:squarederror" | "reg:linear" => (Objective::Identity, 1, vec![scalar()?]),
        "count:poisson" => {
            let b = scalar()?;
            if b <= 0.0 {
                return Err(format!("base_score {b} is not a positive mean count"));
            }
            (Objective::Exp, 1, vec![b.ln()])
        }
        "multi:softprob" | "multi:softmax" => {
            if num_class < 2 {
                return Err(format!("{objective} with num_class {num_class}"));
            }
            let base = match base_score.len() {
                1 => vec![base_score[0]; num_class],
                n if n == num_class => base_score.clone(),
                n => return Err(format!("{n} base scores for {num_class} classes")),
            };
            (Objective::Softmax, num_class, base)
        }
        other => {
            return Err(format!(
                "objective `{other}` is not supported; the trees engine serves {OBJECTIVES}"
            ));
        }
    };

    let model = get(learner, &["gradient_booster", "model"])?;
    let trees = get(model, &["trees"])?
        .as_array()
        .ok_or("`gradient_booster.model.trees` is not a list")?;
    let tree_info = get(model, &["tree_info"])?
        .as_array()
        .ok_or("`gradient_booster.model.tree_info` is not a list")?;
    if tree_info.len() != trees.len() {
        return Err(format!(
            "{} trees but {} tree_info entries",
            trees.len(),
            tree_info.len()
        ));
    }
    let trees = trees
        .iter()
        .zip(tree_info)
        .enumerate()
        .map(|(i, (tree, group))| {
            let group = as_i64(group, "tree_info")?;
            let group = usize::try_from(group)
                .ok()
                .filter(|&g| g < n_groups)
                .ok_or_else(|| format!("tree_info says output {group} of {n_groups}"))?;
            read_tree(tree, group).map_err(|e| format!("tree {i}: {e}"))
        })
        .collect::<Result<Vec<_>, String>>()?;

    let feature_names = learner
        .get("feature_names")
        .and_then(Value::as_array)
        .filter(|names| names.len() == n_features)
        .and_then(|names| {
            names
                .iter()
                .map(|n| n.as_str().map(str::to_string))
                .collect()
        });
    Ok(RawEnsemble {
        n_features,
        n_groups,
        base_margin,
        trees,
        objective: objective_kind,
        feature_names,
    })
}

fn read_tree(tree: &Value, group: usize) -> Result<RawTree, String> {
    if let Some(size) = tree.pointer("/tree_param/size_leaf_vector")
        && param_u64(size, &[]).unwrap_or(1) > 1
    {
        return Err("vector leaves (multi-target trees) are not supported".into());
    }
    let lefts = tree
        .get("left_children")
        .and_then(Value::as_array)
        .ok_or("`left_children` is missing or not a list")?;
    let n = lefts.len();
    let rights = array(tree, "right_children", n)?;
    let features = array(tree, "split_indices", n)?;
    let conditions = array(tree, "split_conditions", n)?;
    let default_left = array(tree, "default_left", n)?;
    let split_type = tree.get("split_type").and_then(Value::as_array);
    let child = |v: &Value, key: &str| -> Result<usize, String> {
        let c = as_i64(v, key)?;
        usize::try_from(c)
            .ok()
            .filter(|&c| c < n)
            .ok_or_else(|| format!("`{key}` points at node {c} of {n}"))
    };
    let mut nodes = Vec::with_capacity(n);
    for i in 0..n {
        let value = conditions[i]
            .as_f64()
            .ok_or_else(|| format!("`split_conditions[{i}]` is not a number"))?
            as f32;
        if as_i64(&lefts[i], "left_children")? == -1 {
            nodes.push(RawNode::Leaf(value));
            continue;
        }
        if let Some(types) = split_type
            && types.get(i).and_then(Value::as_i64).unwrap_or(0) != 0
        {
            return Err(format!(
                "node {i} is a categorical split; XGBoost categorical splits are not supported yet"
            ));
        }
        let feature = as_i64(&features[i], "split_indices")?;
        nodes.push(RawNode::Split {
            feature: u32::try_from(feature)
                .map_err(|_| format!("`split_indices[{i}]` is {feature}"))?,
            test: Test::Less(value),
            default_left: as_i64(&default_left[i], "default_left")? != 0,
            zero_is_missing: false,
            left: child(&lefts[i], "left_children")?,
            right: child(&rights[i], "right_children")?,
        });
    }
    Ok(RawTree { nodes, group })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(objective: &str, base_score: &str, num_class: u32, booster: &str) -> String {
        format!(
            r#"{{"learner": {{
              "feature_names": ["a", "b"],
              "gradient_booster": {{"name": "{booster}", "model": {{
                "tree_info": [0],
                "trees": [{{"left_children": [1, -1, -1], "right_children": [2, -1, -1],
                  "split_indices": [1, 0, 0], "split_conditions": [0.5, -1.0, 2.0],
                  "default_left": [1, 0, 0], "split_type": [0, 0, 0],
                  "tree_param": {{"size_leaf_vector": "1"}}}}]}}}},
              "learner_model_param": {{"base_score": "{base_score}", "num_class": "{num_class}",
                "num_feature": "2", "num_target": "1"}},
              "objective": {{"name": "{objective}"}}}}, "version": [3, 2, 0]}}"#
        )
    }

    #[test]
    fn reads_a_json_model_and_maps_base_score_to_a_margin() {
        let raw = parse(model("binary:logistic", "[2E-1]", 0, "gbtree").as_bytes()).unwrap();
        assert_eq!(raw.n_features, 2);
        assert!((raw.base_margin[0] - (0.25f64).ln()).abs() < 1e-12);
        assert_eq!(raw.feature_names.unwrap(), ["a", "b"]);
        assert_eq!(
            raw.trees[0].nodes[0],
            RawNode::Split {
                feature: 1,
                test: Test::Less(0.5),
                default_left: true,
                zero_is_missing: false,
                left: 1,
                right: 2
            }
        );
        let poisson = parse(model("count:poisson", "2", 0, "gbtree").as_bytes()).unwrap();
        assert!((poisson.base_margin[0] - 2f64.ln()).abs() < 1e-12);
        let raw = parse(model("binary:logitraw", "[3E-1]", 0, "gbtree").as_bytes()).unwrap();
        assert_eq!(raw.base_margin, [0.3]);
    }

    #[test]
    fn refusals_name_the_cause() {
        let cases = [
            (
                model("rank:pairwise", "0.5", 0, "gbtree"),
                "objective `rank:pairwise`",
            ),
            (model("binary:logistic", "0.5", 0, "dart"), "booster `dart`"),
            (
                model("binary:logistic", "1.5", 0, "gbtree"),
                "not a probability",
            ),
            (
                model("multi:softprob", "0.5", 3, "gbtree").replace("[0]", "[5]"),
                "tree_info",
            ),
            (
                model("binary:logistic", "0.5", 0, "gbtree")
                    .replace("\"default_left\": [1, 0, 0]", "\"default_left\": [1, 0]"),
                "`default_left` has 2 entries",
            ),
            (
                model("binary:logistic", "0.5", 0, "gbtree").replace("[0, 0, 0]", "[1, 0, 0]"),
                "categorical",
            ),
            ("{\"a\": 1}".to_string(), "`learner` is missing"),
            ("{\"learner\": ".to_string(), "not valid JSON"),
        ];
        for (doc, needle) in cases {
            let err = parse(doc.as_bytes()).unwrap_err();
            assert!(err.contains(needle), "{needle:?} not in {err:?}");
        }
    }
}
