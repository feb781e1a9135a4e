//! Rewrites ONNX-ML nodes that tract lacks or computes differently from ONNX Runtime into
//! standard ONNX operators, in the model proto, before tract parses it.
//!
//! ONNX Runtime is the reference: converters (skl2onnx, onnxmltools) are tested against it, and
//! the ONNX-ML specification leaves the two-class tree cases open. Each rewrite reproduces what
//! onnxruntime's CPU kernels compute; `tests/py/test_sklearn_zoo.py` checks them against Python
//! onnxruntime on models exported at test time.

use crate::{Engine, RuntimeError};
use std::collections::{BTreeSet, HashSet};
use tract_onnx::pb::attribute_proto::AttributeType;
use tract_onnx::pb::tensor_proto::DataType as PbType;
use tract_onnx::pb::{AttributeProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto};

const ML_DOMAIN: &str = "ai.onnx.ml";

/// Rewrites the graph in place. An error names an operator (or attribute value) that neither
/// tract nor the rewrite handles.
pub(crate) fn rewrite(proto: &mut ModelProto) -> Result<(), RuntimeError> {
    let opset = default_opset(proto);
    let Some(graph) = proto.graph.as_mut() else {
        return Ok(());
    };
    let nodes = std::mem::take(&mut graph.node);
    let mut b = Builder {
        nodes: Vec::with_capacity(nodes.len()),
        initializers: Vec::new(),
        names: nodes
            .iter()
            .flat_map(|n| n.output.iter().cloned())
            .chain(graph.initializer.iter().map(|t| t.name.clone()))
            .chain(graph.input.iter().map(|i| i.name.clone()))
            .collect(),
        opset,
        counter: 0,
        prefix: String::new(),
    };
    let constants_1d: Vec<(String, usize)> = graph
        .initializer
        .iter()
        .filter(|t| t.dims.len() == 1)
        .map(|t| (t.name.clone(), t.dims[0] as usize))
        .collect();
    let mut rewrote = false;
    for node in nodes {
        if node.domain != ML_DOMAIN {
            b.nodes.push(node);
            continue;
        }
        b.prefix = if node.name.is_empty() {
            format!("ferry/{}", node.op_type)
        } else {
            format!("ferry/{}", node.name)
        };
        let done = match node.op_type.as_str() {
            "TreeEnsembleClassifier" => tree_classifier(&mut b, &node)?,
            "TreeEnsembleRegressor" => tree_regressor(&mut b, &node)?,
            "Scaler" => scaler(&mut b, &node),
            "Imputer" => imputer(&mut b, &node)?,
            "OneHotEncoder" => one_hot_encoder(&mut b, &node)?,
            "ArrayFeatureExtractor" => array_feature_extractor(&mut b, &node, &constants_1d),
            "Binarizer" => binarizer(&mut b, &node),
            _ => false,
        };
        if done {
            rewrote = true;
        } else {
            b.nodes.push(node);
        }
    }
    graph.node = b.nodes;
    graph.initializer.extend(b.initializers);
    if rewrote && opset.is_none() {
        // Models made of ONNX-ML nodes only (onnxmltools' XGBoost) import no default domain;
        // the standard operators the rewrites add need one.
        proto.opset_import.push(OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        });
    }
    Ok(())
}

fn default_opset(proto: &ModelProto) -> Option<i64> {
    proto
        .opset_import
        .iter()
        .find(|i| i.domain.is_empty() || i.domain == "ai.onnx")
        .map(|i| i.version)
}

fn unsupported(node: &NodeProto, what: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::UnsupportedOperator {
        engine: Engine::Tract,
        operator: node.op_type.clone(),
        hint: format!(
            "ferry's tract path does not support {what}; serve this model with ONNX Runtime instead (`onnx_engine: ort`)"
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// attributes

fn attr<'a>(node: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

fn ints<'a>(node: &'a NodeProto, name: &str) -> &'a [i64] {
    attr(node, name).map(|a| a.ints.as_slice()).unwrap_or(&[])
}

fn floats<'a>(node: &'a NodeProto, name: &str) -> &'a [f32] {
    attr(node, name).map(|a| a.floats.as_slice()).unwrap_or(&[])
}

fn string(node: &NodeProto, name: &str) -> Option<String> {
    attr(node, name).map(|a| String::from_utf8_lossy(&a.s).into_owned())
}

fn int(node: &NodeProto, name: &str) -> Option<i64> {
    attr(node, name).map(|a| a.i)
}

fn float(node: &NodeProto, name: &str) -> Option<f32> {
    attr(node, name).map(|a| a.f)
}

fn attr_int(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i,
        ..Default::default()
    }
}

fn attr_ints(name: &str, ints: Vec<i64>) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints,
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------------
// graph building

struct Builder {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    names: HashSet<String>,
    opset: Option<i64>,
    counter: usize,
    /// Names of the values a rewrite adds start with this (the rewritten node's name).
    prefix: String,
}

impl Builder {
    fn fresh(&mut self, hint: &str) -> String {
        loop {
            self.counter += 1;
            let name = format!("{}/{hint}/{}", self.prefix, self.counter);
            if self.names.insert(name.clone()) {
                return name;
            }
        }
    }

    fn op(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        let out = self.fresh(&op.to_lowercase());
        self.op_into(op, inputs, &out, attrs);
        out
    }

    fn op_into(&mut self, op: &str, inputs: &[&str], output: &str, attribute: Vec<AttributeProto>) {
        self.nodes.push(NodeProto {
            name: format!("{output}/node"),
            op_type: op.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.to_string()],
            attribute,
            ..Default::default()
        });
    }

    fn f32s(&mut self, hint: &str, dims: Vec<i64>, data: Vec<f32>) -> String {
        let name = self.fresh(hint);
        self.initializers.push(TensorProto {
            name: name.clone(),
            dims,
            data_type: PbType::Float as i32,
            float_data: data,
            ..Default::default()
        });
        name
    }

    fn i64s(&mut self, hint: &str, dims: Vec<i64>, data: Vec<i64>) -> String {
        let name = self.fresh(hint);
        self.initializers.push(TensorProto {
            name: name.clone(),
            dims,
            data_type: PbType::Int64 as i32,
            int64_data: data,
            ..Default::default()
        });
        name
    }

    fn cast(&mut self, x: &str, to: PbType) -> String {
        self.op("Cast", &[x], vec![attr_int("to", to as i64)])
    }

    /// Columns `0..n` of a rank-2 value.
    fn first_columns(&mut self, x: &str, n: usize) -> String {
        let idx = self.i64s("columns", vec![n as i64], (0..n as i64).collect());
        self.op("Gather", &[x, &idx], vec![attr_int("axis", 1)])
    }

    fn reshape(&mut self, x: &str, shape: Vec<i64>) -> String {
        let s = self.i64s("shape", vec![shape.len() as i64], shape);
        self.op("Reshape", &[x, &s], vec![])
    }

    fn unsqueeze_last(&mut self, x: &str) -> String {
        if self.opset.unwrap_or(0) >= 13 {
            let axes = self.i64s("axes", vec![1], vec![-1]);
            self.op("Unsqueeze", &[x, &axes], vec![])
        } else {
            self.op("Unsqueeze", &[x], vec![attr_ints("axes", vec![-1])])
        }
    }

    /// `labels[index]` for an INT64 index tensor, written to `output`.
    fn gather_labels(&mut self, labels: &[i64], index: &str, output: &str) {
        let labels = self.i64s("labels", vec![labels.len() as i64], labels.to_vec());
        self.op_into(
            "Gather",
            &[&labels, index],
            output,
            vec![attr_int("axis", 0)],
        );
    }

    fn identity_into(&mut self, x: &str, output: &str) {
        self.op_into("Identity", &[x], output, vec![]);
    }
}

// ---------------------------------------------------------------------------------------------
// trees

/// The per-class (or per-target) sums of leaf weights, [N, n]: tract's own tree ensemble with
/// no base values and no post transform. Declaring at least three classes keeps tract from its
/// two-class output layout, so the columns are the raw sums whatever the class count.
fn raw_tree_sums(
    b: &mut Builder,
    node: &NodeProto,
    leaf_prefix: &str,
    n: usize,
) -> Result<String, RuntimeError> {
    const DROPPED: &[&str] = &[
        "base_values",
        "base_values_as_tensor",
        "post_transform",
        "classlabels_int64s",
        "classlabels_strings",
        "n_targets",
        "aggregate_function",
    ];
    let mut attribute: Vec<AttributeProto> = Vec::new();
    for a in &node.attribute {
        if DROPPED.contains(&a.name.as_str()) {
            continue;
        }
        if a.name.ends_with("_as_tensor") {
            return Err(unsupported(node, format!("attribute `{}`", a.name)));
        }
        let mut a = a.clone();
        if let Some(rest) = a.name.strip_prefix(leaf_prefix) {
            a.name = format!("class_{rest}");
        }
        attribute.push(a);
    }
    let padded = n.max(3);
    attribute.push(attr_ints(
        "classlabels_int64s",
        (0..padded as i64).collect(),
    ));
    let label = b.fresh("unused_label");
    let scores = b.fresh("raw_sums");
    b.nodes.push(NodeProto {
        name: format!("{scores}/node"),
        op_type: "TreeEnsembleClassifier".into(),
        domain: ML_DOMAIN.into(),
        input: node.input.clone(),
        output: vec![label, scores.clone()],
        attribute,
        ..Default::default()
    });
    Ok(if padded > n {
        b.first_columns(&scores, n)
    } else {
        scores
    })
}

#[derive(Clone, Copy, PartialEq)]
enum Post {
    None,
    Logistic,
    Softmax,
}

fn post_transform(node: &NodeProto) -> Result<Post, RuntimeError> {
    match string(node, "post_transform").as_deref() {
        None | Some("NONE") => Ok(Post::None),
        Some("LOGISTIC") => Ok(Post::Logistic),
        Some("SOFTMAX") => Ok(Post::Softmax),
        Some(other) => Err(unsupported(node, format!("post_transform {other}"))),
    }
}

fn apply_post(b: &mut Builder, post: Post, x: &str, output: &str) {
    match post {
        Post::None => b.identity_into(x, output),
        Post::Logistic => b.op_into("Sigmoid", &[x], output, vec![]),
        Post::Softmax => b.op_into("Softmax", &[x], output, vec![attr_int("axis", 1)]),
    }
}

fn tree_classifier(b: &mut Builder, node: &NodeProto) -> Result<bool, RuntimeError> {
    if attr(node, "classlabels_strings").is_some() {
        return Err(unsupported(node, "string class labels"));
    }
    let labels = ints(node, "classlabels_int64s").to_vec();
    let n = labels.len();
    if n < 2 || node.output.len() != 2 || node.output.iter().any(String::is_empty) {
        return Ok(false);
    }
    let post = post_transform(node)?;
    let base = floats(node, "base_values").to_vec();
    let classes: BTreeSet<i64> = ints(node, "class_ids").iter().copied().collect();
    if classes.iter().any(|&c| c < 0 || c as usize >= n) {
        return Err(unsupported(node, "class_ids outside the class labels"));
    }
    let all_positive = floats(node, "class_weights").iter().all(|&w| w >= 0.0);
    let (label_out, scores_out) = (node.output[0].clone(), node.output[1].clone());
    let sums = raw_tree_sums(b, node, "class_", n)?;

    if n > 2 {
        // Base values are added when there is one per class; classes no leaf votes for are
        // left out of the argmax when there are none.
        let scores = match base.len() {
            0 => sums,
            len if len == n => {
                let c = b.f32s("base_values", vec![n as i64], base.clone());
                b.op("Add", &[&sums, &c], vec![])
            }
            len => {
                return Err(unsupported(
                    node,
                    format!("{len} base_values for {n} classes"),
                ));
            }
        };
        let ranked = if base.is_empty() && classes.len() < n {
            let mask = (0..n as i64)
                .map(|c| {
                    if classes.contains(&c) {
                        0.0
                    } else {
                        f32::NEG_INFINITY
                    }
                })
                .collect();
            let mask = b.f32s("unvoted", vec![n as i64], mask);
            b.op("Add", &[&scores, &mask], vec![])
        } else {
            scores.clone()
        };
        let winner = b.op(
            "ArgMax",
            &[&ranked],
            vec![attr_int("axis", 1), attr_int("keepdims", 0)],
        );
        b.gather_labels(&labels, &winner, &label_out);
        apply_post(b, post, &scores, &scores_out);
        return Ok(true);
    }

    // Two classes. onnxruntime distinguishes leaves voting for one class only (the usual
    // export: one score per row) from leaves voting for both.
    if classes.len() == 2 {
        let scores = match base.len() {
            0 => sums,
            1 => {
                let c = b.f32s("base_values", vec![2], vec![base[0], 0.0]);
                b.op("Add", &[&sums, &c], vec![])
            }
            2 => {
                // onnxruntime scores [-(s0 + b1), s0 + b1] here: base_values[0] and the
                // second class's sums are not used.
                let s0 = b.first_columns(&sums, 1);
                let c = b.f32s("base_value", vec![1], vec![base[1]]);
                let pos = b.op("Add", &[&s0, &c], vec![]);
                let neg = b.op("Neg", &[&pos], vec![]);
                b.op("Concat", &[&neg, &pos], vec![attr_int("axis", 1)])
            }
            len => {
                return Err(unsupported(
                    node,
                    format!("{len} base_values for 2 classes"),
                ));
            }
        };
        // The label is 1 when the second score is positive, 0 otherwise (onnxruntime's
        // positive and negative labels, not the class labels).
        let second = b.i64s("second", vec![1], vec![1]);
        let pos = b.op("Gather", &[&scores, &second], vec![attr_int("axis", 1)]);
        let zero = b.f32s("zero", vec![], vec![0.0]);
        let above = b.op("Greater", &[&pos, &zero], vec![]);
        let index = b.cast(&above, PbType::Int64);
        let flat = b.reshape(&index, vec![-1]);
        b.gather_labels(&[0, 1], &flat, &label_out);
        apply_post(b, post, &scores, &scores_out);
        return Ok(true);
    }
    if classes.first() != Some(&0) {
        return Err(unsupported(
            node,
            "two-class trees whose leaves all vote for the second class",
        ));
    }

    // Leaves vote for the first class only: its sum s (+ base_values[0]) is the score of the
    // positive class. The threshold is 0.5 when all weights are positive (probabilities, as in
    // forests), 0 otherwise (margins, as in boosting).
    let s0 = b.first_columns(&sums, 1);
    let pos = match base.len() {
        0 => s0,
        1 | 2 => {
            let c = b.f32s("base_value", vec![1], vec![base[0]]);
            b.op("Add", &[&s0, &c], vec![])
        }
        len => {
            return Err(unsupported(
                node,
                format!("{len} base_values for 2 classes"),
            ));
        }
    };
    let threshold = b.f32s(
        "threshold",
        vec![],
        vec![if all_positive { 0.5 } else { 0.0 }],
    );
    let above = b.op("Greater", &[&pos, &threshold], vec![]);
    let index = b.cast(&above, PbType::Int64);
    let flat = b.reshape(&index, vec![-1]);
    b.gather_labels(&labels, &flat, &label_out);
    if base.len() == 2 {
        // Two base values: scores are [s + b0, 0] through the post transform (the second
        // class, which no leaf votes for, scores 0: base_values[1] is not used).
        let zeros = b.op("Sub", &[&pos, &pos], vec![]);
        let both = b.op("Concat", &[&pos, &zeros], vec![attr_int("axis", 1)]);
        apply_post(b, post, &both, &scores_out);
    } else if all_positive {
        // [1 - p, p] where p is s through the logistic function when that is the post
        // transform, s itself otherwise (SOFTMAX included).
        let p = if post == Post::Logistic {
            b.op("Sigmoid", &[&pos], vec![])
        } else {
            pos
        };
        let one = b.f32s("one", vec![], vec![1.0]);
        let complement = b.op("Sub", &[&one, &p], vec![]);
        b.op_into(
            "Concat",
            &[&complement, &p],
            &scores_out,
            vec![attr_int("axis", 1)],
        );
    } else {
        // [-s, s], through the logistic function when that is the post transform.
        let neg = b.op("Neg", &[&pos], vec![]);
        if post == Post::Logistic {
            let both = b.op("Concat", &[&neg, &pos], vec![attr_int("axis", 1)]);
            b.op_into("Sigmoid", &[&both], &scores_out, vec![]);
        } else {
            b.op_into(
                "Concat",
                &[&neg, &pos],
                &scores_out,
                vec![attr_int("axis", 1)],
            );
        }
    }
    Ok(true)
}

fn tree_regressor(b: &mut Builder, node: &NodeProto) -> Result<bool, RuntimeError> {
    let targets = int(node, "n_targets").unwrap_or(1).max(1) as usize;
    if node.output.len() != 1 {
        return Ok(false);
    }
    if post_transform(node)? != Post::None {
        return Err(unsupported(
            node,
            format!(
                "post_transform {}",
                string(node, "post_transform").unwrap_or_default()
            ),
        ));
    }
    let aggregate = string(node, "aggregate_function").unwrap_or_else(|| "SUM".into());
    if aggregate != "SUM" && aggregate != "AVERAGE" {
        return Err(unsupported(node, format!("aggregate_function {aggregate}")));
    }
    let base = floats(node, "base_values").to_vec();
    let trees: BTreeSet<i64> = ints(node, "nodes_treeids").iter().copied().collect();
    let mut out = raw_tree_sums(b, node, "target_", targets)?;
    if aggregate == "AVERAGE" {
        let n = b.f32s("tree_count", vec![], vec![trees.len() as f32]);
        out = b.op("Div", &[&out, &n], vec![]);
    }
    // onnxruntime adds base values only when there is one per target.
    if base.len() == targets {
        let c = b.f32s("base_values", vec![targets as i64], base);
        out = b.op("Add", &[&out, &c], vec![]);
    }
    b.identity_into(&out, &node.output[0]);
    Ok(true)
}

// ---------------------------------------------------------------------------------------------
// preprocessing

fn scaler(b: &mut Builder, node: &NodeProto) -> bool {
    let (offset, scale) = (
        floats(node, "offset").to_vec(),
        floats(node, "scale").to_vec(),
    );
    let mut x = b.cast(&node.input[0], PbType::Float);
    if !offset.is_empty() {
        let c = b.f32s("offset", vec![offset.len() as i64], offset);
        x = b.op("Sub", &[&x, &c], vec![]);
    }
    if !scale.is_empty() {
        let c = b.f32s("scale", vec![scale.len() as i64], scale);
        x = b.op("Mul", &[&x, &c], vec![]);
    }
    b.identity_into(&x, &node.output[0]);
    true
}

fn imputer(b: &mut Builder, node: &NodeProto) -> Result<bool, RuntimeError> {
    let x = node.input[0].as_str();
    let values = floats(node, "imputed_value_floats").to_vec();
    if !values.is_empty() {
        let replaced = float(node, "replaced_value_float").unwrap_or(0.0);
        let mask = if replaced.is_nan() {
            b.op("IsNaN", &[x], vec![])
        } else {
            let r = b.f32s("replaced_value", vec![], vec![replaced]);
            b.op("Equal", &[x, &r], vec![])
        };
        let v = b.f32s("imputed_values", vec![values.len() as i64], values);
        b.op_into("Where", &[&mask, &v, x], &node.output[0], vec![]);
        return Ok(true);
    }
    let values = ints(node, "imputed_value_int64s").to_vec();
    if values.is_empty() {
        return Err(unsupported(node, "an Imputer without imputed values"));
    }
    let replaced = int(node, "replaced_value_int64").unwrap_or(0);
    let r = b.i64s("replaced_value", vec![], vec![replaced]);
    let mask = b.op("Equal", &[x, &r], vec![]);
    let v = b.i64s("imputed_values", vec![values.len() as i64], values);
    b.op_into("Where", &[&mask, &v, x], &node.output[0], vec![]);
    Ok(true)
}

fn one_hot_encoder(b: &mut Builder, node: &NodeProto) -> Result<bool, RuntimeError> {
    if attr(node, "cats_strings").is_some() {
        return Err(unsupported(
            node,
            "string categories (tract takes no BYTES tensors)",
        ));
    }
    let cats = ints(node, "cats_int64s").to_vec();
    if cats.is_empty() {
        return Ok(false);
    }
    // onnxruntime truncates float inputs to integers before looking them up; an unknown
    // category gives a row of zeros.
    let xi = b.cast(&node.input[0], PbType::Int64);
    let x = b.unsqueeze_last(&xi);
    let c = b.i64s("categories", vec![cats.len() as i64], cats);
    let hit = b.op("Equal", &[&x, &c], vec![]);
    b.op_into(
        "Cast",
        &[&hit],
        &node.output[0],
        vec![attr_int("to", PbType::Float as i64)],
    );
    Ok(true)
}

/// `X[..., indices]`; a one-dimensional X gives a [1, k] result, as in onnxruntime.
fn array_feature_extractor(
    b: &mut Builder,
    node: &NodeProto,
    constants_1d: &[(String, usize)],
) -> bool {
    let (x, indices) = (node.input[0].as_str(), node.input[1].as_str());
    let flat = b.reshape(indices, vec![-1]);
    if constants_1d.iter().any(|(name, _)| name == x) {
        let picked = b.op("Gather", &[x, &flat], vec![attr_int("axis", 0)]);
        let shape = b.i64s("shape", vec![2], vec![1, -1]);
        b.op_into("Reshape", &[&picked, &shape], &node.output[0], vec![]);
    } else {
        b.op_into(
            "Gather",
            &[x, &flat],
            &node.output[0],
            vec![attr_int("axis", -1)],
        );
    }
    true
}

fn binarizer(b: &mut Builder, node: &NodeProto) -> bool {
    let t = b.f32s(
        "threshold",
        vec![],
        vec![float(node, "threshold").unwrap_or(0.0)],
    );
    let above = b.op("Greater", &[&node.input[0], &t], vec![]);
    b.op_into(
        "Cast",
        &[&above],
        &node.output[0],
        vec![attr_int("to", PbType::Float as i64)],
    );
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(node: NodeProto, opsets: &[(&str, i64)]) -> ModelProto {
        ModelProto {
            graph: Some(tract_onnx::pb::GraphProto {
                node: vec![node],
                ..Default::default()
            }),
            opset_import: opsets
                .iter()
                .map(|(domain, version)| OperatorSetIdProto {
                    domain: domain.to_string(),
                    version: *version,
                })
                .collect(),
            ..Default::default()
        }
    }

    fn tree_classifier_node(post: &str) -> NodeProto {
        NodeProto {
            op_type: "TreeEnsembleClassifier".into(),
            domain: ML_DOMAIN.into(),
            input: vec!["X".into()],
            output: vec!["label".into(), "probabilities".into()],
            attribute: vec![
                attr_ints("classlabels_int64s", vec![0, 1]),
                attr_ints("class_ids", vec![0]),
                AttributeProto {
                    name: "post_transform".into(),
                    r#type: AttributeType::String as i32,
                    s: post.as_bytes().to_vec(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn a_post_transform_the_rewrite_cannot_reproduce_is_refused_with_its_name() {
        let mut m = model(tree_classifier_node("PROBIT"), &[("", 17), (ML_DOMAIN, 3)]);
        let err = rewrite(&mut m).unwrap_err();
        assert!(
            matches!(&err, RuntimeError::UnsupportedOperator { operator, .. } if operator == "TreeEnsembleClassifier"),
            "{err}"
        );
        let message = err.to_string();
        assert!(
            message.contains("PROBIT") && message.contains("onnx_engine: ort"),
            "{message}"
        );
    }

    #[test]
    fn a_model_without_the_default_domain_gets_one_for_the_operators_added() {
        let mut m = model(tree_classifier_node("LOGISTIC"), &[(ML_DOMAIN, 1)]);
        rewrite(&mut m).unwrap();
        assert!(
            m.opset_import
                .iter()
                .any(|i| i.domain.is_empty() && i.version == 13)
        );
        let graph = m.graph.unwrap();
        // The outputs keep their names, produced by standard operators now.
        for output in ["label", "probabilities"] {
            let producer = graph
                .node
                .iter()
                .find(|n| n.output.iter().any(|o| o == output))
                .unwrap();
            assert!(producer.domain.is_empty(), "{output}: {producer:?}");
        }
        assert!(
            graph
                .node
                .iter()
                .filter(|n| n.domain == ML_DOMAIN)
                .all(|n| n.op_type == "TreeEnsembleClassifier"
                    && ints(n, "classlabels_int64s").len() >= 3)
        );
    }
}
