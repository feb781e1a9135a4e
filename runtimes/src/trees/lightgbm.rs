//! LightGBM's text model format (`Booster.save_model`, `model.txt`): a `key=value` header, one
//! `Tree=N` block per tree, then feature importances and the training parameters.
//!
//! A numerical split sends `x` left when `x <= threshold` (a double); `decision_type` packs the
//! split kind (bit 0: categorical), the default direction (bit 1: left) and the missing-value
//! rule (bits 2-3: 0 None — NaN is treated as 0; 1 Zero — 0 and NaN take the default
//! direction; 2 NaN — NaN takes it). Children below 0 are leaves (`~child`).

use super::ensemble::{Objective, RawEnsemble, RawNode, RawTree, Test};
use std::collections::HashMap;

pub(crate) const OBJECTIVES: &str = "binary, multiclass, regression, poisson";

pub(crate) fn parse(text: &str) -> Result<RawEnsemble, String> {
    let mut lines = text.lines().map(str::trim).enumerate().peekable();
    match lines.next() {
        Some((_, "tree")) => {}
        _ => {
            return Err(
                "the first line is not `tree`: not a LightGBM text model (Booster.save_model)"
                    .into(),
            );
        }
    }
    let mut header = HashMap::new();
    while let Some(&(_, line)) = lines.peek() {
        if line.starts_with("Tree=") || line == "end of trees" {
            break;
        }
        lines.next();
        if let Some((k, v)) = line.split_once('=') {
            header.insert(k, v);
        } else if line == "average_output" {
            return Err(
                "`average_output` (random forest boosting, `boosting: rf`) is not supported yet"
                    .into(),
            );
        }
    }
    let field = |key: &str| {
        header
            .get(key)
            .copied()
            .ok_or_else(|| format!("the header has no `{key}`"))
    };
    let number = |key: &str| -> Result<usize, String> {
        let v = field(key)?;
        v.parse()
            .map_err(|_| format!("`{key}={v}` is not a whole number"))
    };
    let n_features = number("max_feature_idx")? + 1;
    let num_class = number("num_class")?;
    let per_iteration = number("num_tree_per_iteration")?;
    let objective_line = field("objective")?;
    let mut parts = objective_line.split_whitespace();
    let objective_name = parts.next().unwrap_or("");
    let options: HashMap<&str, &str> = parts.filter_map(|p| p.split_once(':')).collect();
    let objective = match objective_name {
        "binary" => {
            let scale = match options.get("sigmoid") {
                Some(s) => s
                    .parse::<f64>()
                    .map_err(|_| format!("`objective={objective_line}`: bad sigmoid"))?,
                None => 1.0,
            };
            Objective::BinaryLogistic { scale }
        }
        "multiclass" => Objective::Softmax,
        "regression" if objective_line.split_whitespace().any(|p| p == "sqrt") => {
            return Err(
                "objective `regression` with `reg_sqrt` is not supported yet (predictions would need squaring)"
                    .into(),
            );
        }
        "regression" => Objective::Identity,
        "poisson" => Objective::Exp,
        other => {
            return Err(format!(
                "objective `{other}` is not supported; the trees engine serves {OBJECTIVES}"
            ));
        }
    };
    let expected_per_iteration = if objective == Objective::Softmax {
        num_class
    } else {
        1
    };
    if per_iteration != expected_per_iteration {
        return Err(format!(
            "`num_tree_per_iteration={per_iteration}` does not fit objective `{objective_name}` with num_class {num_class}"
        ));
    }

    let mut trees = Vec::new();
    let mut ended = false;
    while let Some((line_no, line)) = lines.next() {
        if line == "end of trees" {
            ended = true;
            break;
        }
        let Some(index) = line.strip_prefix("Tree=") else {
            continue;
        };
        let mut block = HashMap::new();
        while let Some(&(_, l)) = lines.peek() {
            if l.is_empty() || l.starts_with("Tree=") || l == "end of trees" {
                break;
            }
            lines.next();
            if let Some((k, v)) = l.split_once('=') {
                block.insert(k, v);
            }
        }
        let group = trees.len() % per_iteration;
        let tree = read_tree(&block, group, n_features)
            .map_err(|e| format!("Tree={index} (line {}): {e}", line_no + 1))?;
        trees.push(tree);
    }
    if !ended {
        return Err("the file ends before `end of trees`: it is truncated".into());
    }
    if trees.is_empty() {
        return Err("the model has no trees".into());
    }
    if trees.len() % per_iteration != 0 {
        return Err(format!(
            "{} trees is not a whole number of iterations of {per_iteration}",
            trees.len()
        ));
    }
    for (_, line) in lines {
        if let Some(value) = line
            .strip_prefix("[linear_tree:")
            .and_then(|v| v.strip_suffix(']'))
            && value.trim() != "0"
        {
            return Err(linear_tree_refusal());
        }
    }
    let feature_names = header
        .get("feature_names")
        .map(|names| names.split(' ').map(str::to_string).collect::<Vec<_>>())
        .filter(|names| names.len() == n_features);
    Ok(RawEnsemble {
        n_features,
        n_groups: expected_per_iteration,
        base_margin: vec![0.0; expected_per_iteration],
        trees,
        objective,
        feature_names,
    })
}

fn linear_tree_refusal() -> String {
    "`linear_tree` models (leaves holding linear models) are not supported by the trees engine; \
     retrain with linear_tree=false or convert the model to ONNX"
        .into()
}

fn list<T: std::str::FromStr>(block: &HashMap<&str, &str>, key: &str) -> Result<Vec<T>, String> {
    let Some(v) = block.get(key) else {
        return Err(format!("`{key}` is missing"));
    };
    v.split_whitespace()
        .map(|x| {
            x.parse::<T>()
                .map_err(|_| format!("`{key}` holds {x:?}, not a number"))
        })
        .collect()
}

/// `x <= t` (a double) as the engine's `x < threshold` (an f32), exactly for every f32 `x`:
/// the largest f32 not above `t`, moved one step up.
pub(crate) fn strict_f32_threshold(t: f64) -> f32 {
    let mut below = t as f32;
    if f64::from(below) > t {
        below = below.next_down();
    }
    below.next_up()
}

fn read_tree(
    block: &HashMap<&str, &str>,
    group: usize,
    n_features: usize,
) -> Result<RawTree, String> {
    if block.get("is_linear").is_some_and(|v| v.trim() != "0") {
        return Err(linear_tree_refusal());
    }
    let num_leaves: usize = list::<usize>(block, "num_leaves")?
        .first()
        .copied()
        .ok_or("`num_leaves` is empty")?;
    let leaf_values: Vec<f64> = list(block, "leaf_value")?;
    if num_leaves == 0 || leaf_values.len() != num_leaves {
        return Err(format!(
            "{} leaf values for num_leaves={num_leaves}",
            leaf_values.len()
        ));
    }
    if num_leaves == 1 {
        return Ok(RawTree {
            nodes: vec![RawNode::Leaf(leaf_values[0] as f32)],
            group,
        });
    }
    let n_splits = num_leaves - 1;
    let features: Vec<u32> = list(block, "split_feature")?;
    let thresholds: Vec<f64> = list(block, "threshold")?;
    let decision_types: Vec<u8> = list(block, "decision_type")?;
    let lefts: Vec<i64> = list(block, "left_child")?;
    let rights: Vec<i64> = list(block, "right_child")?;
    for (key, len) in [
        ("split_feature", features.len()),
        ("threshold", thresholds.len()),
        ("decision_type", decision_types.len()),
        ("left_child", lefts.len()),
        ("right_child", rights.len()),
    ] {
        if len != n_splits {
            return Err(format!(
                "`{key}` has {len} entries for {n_splits} splits (num_leaves={num_leaves})"
            ));
        }
    }
    let num_cat = list::<usize>(block, "num_cat")
        .ok()
        .and_then(|v| v.first().copied())
        .unwrap_or(0);
    let (cat_boundaries, cat_words): (Vec<usize>, Vec<u32>) = if num_cat > 0 {
        (
            list(block, "cat_boundaries")?,
            list(block, "cat_threshold")?,
        )
    } else {
        (Vec::new(), Vec::new())
    };
    // Splits first, then leaves, in one node list.
    let child = |c: i64| -> Result<usize, String> {
        if c >= 0 {
            usize::try_from(c)
                .ok()
                .filter(|&c| c < n_splits)
                .ok_or_else(|| format!("child {c} of {n_splits} splits"))
        } else {
            usize::try_from(!c)
                .ok()
                .filter(|&l| l < num_leaves)
                .map(|l| n_splits + l)
                .ok_or_else(|| format!("leaf child {c} of {num_leaves} leaves"))
        }
    };
    let mut nodes = Vec::with_capacity(n_splits + num_leaves);
    for i in 0..n_splits {
        let dt = decision_types[i];
        if usize::try_from(features[i]).map_or(true, |f| f >= n_features) {
            return Err(format!(
                "split {i} uses feature {} of {n_features}",
                features[i]
            ));
        }
        let default_left = dt & 2 != 0;
        let missing = (dt >> 2) & 3;
        let threshold = thresholds[i];
        if threshold.is_nan() {
            return Err(format!("split {i} has a NaN threshold"));
        }
        let (test, default_left, zero_is_missing) = if dt & 1 != 0 {
            let cat = threshold as usize;
            let range = cat_boundaries
                .get(cat)
                .zip(cat_boundaries.get(cat + 1))
                .filter(|(a, b)| a <= b && **b <= cat_words.len())
                .ok_or_else(|| {
                    format!(
                        "categorical split {i} points at bitset {cat} of {num_cat} (cat_boundaries/cat_threshold)"
                    )
                })?;
            (
                Test::InSet(cat_words[*range.0..*range.1].to_vec()),
                false,
                false,
            )
        } else {
            let t = strict_f32_threshold(threshold);
            match missing {
                // NaN is compared as 0, so it goes wherever 0 goes.
                0 => (Test::Less(t), 0.0 < t, false),
                1 => (Test::Less(t), default_left, true),
                2 => (Test::Less(t), default_left, false),
                other => {
                    return Err(format!(
                        "split {i} has missing type {other} in decision_type {dt}"
                    ));
                }
            }
        };
        nodes.push(RawNode::Split {
            feature: features[i],
            test,
            default_left,
            zero_is_missing,
            left: child(lefts[i])?,
            right: child(rights[i])?,
        });
    }
    nodes.extend(leaf_values.iter().map(|&v| RawNode::Leaf(v as f32)));
    Ok(RawTree { nodes, group })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trees::ensemble::tests::Rng;

    const MODEL: &str = "tree\nversion=v4\nnum_class=1\nnum_tree_per_iteration=1\nlabel_index=0\n\
max_feature_idx=1\nobjective=binary sigmoid:1\nfeature_names=a b\nfeature_infos=x x\n\
tree_sizes=1\n\nTree=0\nnum_leaves=3\nnum_cat=1\nsplit_feature=0 1\nsplit_gain=1 1\n\
threshold=0.5 0\ndecision_type=10 1\nleft_child=1 -1\nright_child=-2 -3\n\
leaf_value=0.1 0.2 0.3\ncat_boundaries=0 1\ncat_threshold=6\nis_linear=0\nshrinkage=1\n\n\n\
end of trees\n\nparameters:\n[linear_tree: 0]\nend of parameters\n";

    #[test]
    fn reads_numerical_and_categorical_splits() {
        let raw = parse(MODEL).unwrap();
        assert_eq!(raw.n_features, 2);
        assert_eq!(
            raw.feature_names.as_deref(),
            Some(&["a".into(), "b".into()][..])
        );
        let nodes = &raw.trees[0].nodes;
        assert_eq!(
            nodes[0],
            RawNode::Split {
                feature: 0,
                test: Test::Less(strict_f32_threshold(0.5)),
                default_left: true,
                zero_is_missing: false,
                left: 1,
                right: 3
            }
        );
        assert_eq!(
            nodes[1],
            RawNode::Split {
                feature: 1,
                test: Test::InSet(vec![6]),
                default_left: false,
                zero_is_missing: false,
                left: 2,
                right: 4
            }
        );
        assert_eq!(nodes[2], RawNode::Leaf(0.1));
    }

    #[test]
    fn refusals_name_the_cause() {
        let cases = [
            (
                MODEL.replace("[linear_tree: 0]", "[linear_tree: 1]"),
                "`linear_tree`",
            ),
            (MODEL.replace("is_linear=0", "is_linear=1"), "`linear_tree`"),
            (
                MODEL.replace("binary sigmoid:1", "lambdarank"),
                "objective `lambdarank`",
            ),
            (MODEL.replace("end of trees", ""), "truncated"),
            (
                MODEL.replace("left_child=1 -1", "left_child=1"),
                "`left_child` has 1",
            ),
            (
                MODEL.replace("cat_boundaries=0 1", "cat_boundaries=0 9"),
                "bitset 0",
            ),
            (MODEL.replace("tree\n", "{}\n"), "not a LightGBM"),
            (
                MODEL.replace("num_tree_per_iteration=1", "num_tree_per_iteration=3"),
                "num_tree_per_iteration",
            ),
        ];
        for (text, needle) in cases {
            let err = parse(&text).unwrap_err();
            assert!(err.contains(needle), "{needle:?} not in {err:?}");
        }
    }

    #[test]
    fn strict_thresholds_agree_with_lightgbm_comparison() {
        let mut rng = Rng::new(3);
        let specials = [0.0, -0.0, 1e-35, -1e-35, 1e300, -1e300, f64::from(f32::MAX)];
        for i in 0..20000 {
            let t = if i < specials.len() {
                specials[i]
            } else {
                (f64::from(rng.unit()) - 0.5) * 10f64.powi(rng.below(12) as i32 - 6)
            };
            let strict = strict_f32_threshold(t);
            let near = t as f32;
            for x in [
                near,
                near.next_up(),
                near.next_down(),
                0.0,
                -0.0,
                f32::MAX,
                -f32::MAX,
                f32::INFINITY,
                f32::NEG_INFINITY,
            ] {
                assert_eq!(x < strict, f64::from(x) <= t, "x={x:e} t={t:e}");
            }
        }
    }
}
