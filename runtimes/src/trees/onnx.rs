//! ONNX-ML `TreeEnsembleClassifier` / `TreeEnsembleRegressor` graphs (skl2onnx, onnxmltools) on
//! the trees engine.
//!
//! A graph is taken when it is one tree ensemble plus nodes that only rename, cast to the type
//! a value already has, or apply an elementwise step to the scores (skl2onnx's tails); anything
//! else is refused with the reason, and `auto` serves the model as it would any ONNX model.
//!
//! ONNX Runtime is the reference (see `tract/onnx_ml.rs` for its two-class rules): leaves are
//! summed in f32 in tree order and the finishing steps run in f32 as its CPU kernels do, so
//! labels agree even where a forest's vote lands on its 0.5 threshold.

use super::ensemble::{Aggregate, Ensemble, Objective, RawEnsemble, RawNode, RawTree, Test};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use tract_onnx::pb::tensor_proto::DataType as PbType;
use tract_onnx::pb::{AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto};

const ML_DOMAIN: &str = "ai.onnx.ml";

/// Which of the tree node's results a graph output is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    Label,
    Scores,
}

/// An elementwise step skl2onnx appends to the scores (`Mul` by a constant then `Sigmoid` for
/// `loss="exponential"`); constants have one value or one per column.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Step {
    Add(Vec<f32>),
    Sub(Vec<f32>),
    Mul(Vec<f32>),
    Div(Vec<f32>),
    Sigmoid,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct GraphOutput {
    pub name: String,
    pub source: Source,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Post {
    None,
    Logistic,
    Softmax,
    SoftmaxZero,
    Probit,
}

/// How the per-column tree sums become the node's outputs.
#[derive(Debug, Clone, PartialEq)]
enum Head {
    Regressor {
        /// AVERAGE divides by the tree count.
        divisor: Option<f32>,
        /// Added when there is one per target (onnxruntime ignores other counts).
        base: Option<Vec<f32>>,
    },
    /// More than two classes: argmax over the voted classes, post transform over all.
    Multiclass {
        labels: Vec<i64>,
        base: Option<Vec<f32>>,
        /// Classes no leaf votes for stay out of the argmax when there are no base values.
        voted: Vec<bool>,
    },
    /// Two classes whose leaves vote for both.
    BinaryBoth { bases: Vec<f32> },
    /// Two classes whose leaves vote for the first only: one score per row.
    BinaryOne {
        labels: [i64; 2],
        base: f32,
        two_bases: bool,
        all_positive: bool,
    },
}

/// How a tree graph's outputs come from the ensemble's margins.
#[derive(Debug, Clone)]
pub(crate) struct OnnxTrees {
    pub input: String,
    pub outputs: Vec<GraphOutput>,
    head: Head,
    post: Post,
    /// Columns of the scores (classes, or regression targets), and of the margins.
    pub width: usize,
}

/// What the value of a name in the graph is.
#[derive(Debug, Clone)]
enum Value {
    Input,
    Label,
    Scores(Vec<Step>),
    Constant(Vec<f32>, Vec<i64>),
}

/// Reads `proto` as a tree graph. `n_features` is the width the manifest declares, used when
/// the graph leaves it open. The error says why the graph is not one the engine takes.
pub(crate) fn read(
    proto: &ModelProto,
    n_features: Option<usize>,
) -> Result<(Ensemble, OnnxTrees), String> {
    let graph = proto.graph.as_ref().ok_or("the model has no graph")?;
    let initializers: HashMap<&str, &TensorProto> = graph
        .initializer
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect();
    let (input, width_declared) = graph_input(graph, &initializers)?;
    let mut values: HashMap<String, Value> = HashMap::new();
    values.insert(input.clone(), Value::Input);
    let mut tree: Option<&NodeProto> = None;
    let constant = |values: &HashMap<String, Value>, name: &str| -> Option<(Vec<f32>, Vec<i64>)> {
        match values.get(name) {
            Some(Value::Constant(v, dims)) => Some((v.clone(), dims.clone())),
            Some(_) => None,
            None => initializers
                .get(name)
                .and_then(|t| f32_tensor(t).map(|v| (v, t.dims.clone()))),
        }
    };
    for node in &graph.node {
        let op = node.op_type.as_str();
        let refuse = |why: &str| format!("node `{}` ({op}): {why}", node.name);
        let first = node.input.first().and_then(|i| values.get(i)).cloned();
        let result = match (node.domain.as_str(), op) {
            (ML_DOMAIN, "TreeEnsembleClassifier" | "TreeEnsembleRegressor") => {
                if tree.is_some() {
                    return Err("the graph has more than one tree ensemble".into());
                }
                if !matches!(first, Some(Value::Input)) {
                    return Err(refuse("its input is not the graph's input"));
                }
                tree = Some(node);
                let regressor = op == "TreeEnsembleRegressor";
                if node.output.len() > if regressor { 1 } else { 2 } {
                    return Err(refuse("more outputs than the operator has"));
                }
                for (i, out) in node.output.iter().enumerate() {
                    let v = if regressor || i == 1 {
                        Value::Scores(Vec::new())
                    } else {
                        Value::Label
                    };
                    values.insert(out.clone(), v);
                }
                continue;
            }
            ("" | "ai.onnx", "Identity") => first.ok_or_else(|| refuse("unknown input"))?,
            ("" | "ai.onnx", "Cast") => {
                let to = attr(node, "to").map(|a| a.i);
                match (first, to) {
                    (Some(v @ (Value::Input | Value::Scores(_))), Some(t))
                        if t == PbType::Float as i64 =>
                    {
                        v
                    }
                    (Some(Value::Label), Some(t)) if t == PbType::Int64 as i64 => Value::Label,
                    _ => return Err(refuse("a cast that changes the type")),
                }
            }
            ("" | "ai.onnx", "Constant") => {
                let t = attr(node, "value")
                    .and_then(|a| a.t.as_ref())
                    .ok_or_else(|| refuse("not a tensor constant"))?;
                let v = f32_tensor(t).ok_or_else(|| refuse("not a float constant"))?;
                Value::Constant(v, t.dims.clone())
            }
            ("" | "ai.onnx", "Sigmoid") => match first {
                Some(Value::Scores(mut steps)) => {
                    steps.push(Step::Sigmoid);
                    Value::Scores(steps)
                }
                _ => return Err(refuse("applied to something other than the scores")),
            },
            ("" | "ai.onnx", "Add" | "Sub" | "Mul" | "Div") => {
                let [a, b] = &node.input[..] else {
                    return Err(refuse("not two inputs"));
                };
                let (steps, c, scores_first) = match (values.get(a), values.get(b)) {
                    (Some(Value::Scores(s)), _) => (s.clone(), constant(&values, b), true),
                    (_, Some(Value::Scores(s))) => (s.clone(), constant(&values, a), false),
                    _ => return Err(refuse("applied to something other than the scores")),
                };
                let (c, dims) = c.ok_or_else(|| refuse("the other operand is not a constant"))?;
                if dims.len() > 2 || (dims.len() == 2 && dims[0] != 1) || c.is_empty() {
                    return Err(refuse("a constant of a shape other than [k] or [1, k]"));
                }
                let step = match (op, scores_first) {
                    ("Add", _) => Step::Add(c),
                    ("Mul", _) => Step::Mul(c),
                    ("Sub", true) => Step::Sub(c),
                    ("Div", true) => Step::Div(c),
                    _ => return Err(refuse("the scores are the second operand")),
                };
                let mut steps = steps;
                steps.push(step);
                Value::Scores(steps)
            }
            (ML_DOMAIN, "ZipMap") => {
                return Err(refuse("ZipMap outputs (export with zipmap=False)"));
            }
            _ => return Err(refuse("not an operator the trees engine runs")),
        };
        let [out] = &node.output[..] else {
            return Err(refuse("not one output"));
        };
        values.insert(out.clone(), result);
    }
    let tree = tree.ok_or("the graph has no TreeEnsembleClassifier or TreeEnsembleRegressor")?;
    let mut outputs = Vec::new();
    for out in &graph.output {
        let (source, steps) = match values.get(&out.name) {
            Some(Value::Label) => (Source::Label, Vec::new()),
            Some(Value::Scores(steps)) => (Source::Scores, steps.clone()),
            _ => {
                return Err(format!(
                    "graph output `{}` is not the trees' result",
                    out.name
                ));
            }
        };
        outputs.push(GraphOutput {
            name: out.name.clone(),
            source,
            steps,
        });
    }
    let n_features = width_declared.or(n_features).ok_or(
        "the input's width is not fixed by the graph or model.yaml (declare [-1, n_features])",
    )?;
    let (ensemble, mut built) = build(tree, n_features)?;
    for out in &outputs {
        for step in &out.steps {
            if let Step::Add(c) | Step::Sub(c) | Step::Mul(c) | Step::Div(c) = step
                && c.len() != 1
                && c.len() != built.width
            {
                return Err(format!(
                    "output `{}`: a constant of {} values for {} columns",
                    out.name,
                    c.len(),
                    built.width
                ));
            }
        }
    }
    built.input = input;
    built.outputs = outputs;
    Ok((ensemble, built))
}

/// The one graph input that is not an initializer: FP32, rank 2. Returns its name and width
/// when the graph fixes it.
fn graph_input(
    graph: &GraphProto,
    initializers: &HashMap<&str, &TensorProto>,
) -> Result<(String, Option<usize>), String> {
    let inputs: Vec<_> = graph
        .input
        .iter()
        .filter(|i| !initializers.contains_key(i.name.as_str()))
        .collect();
    let [input] = &inputs[..] else {
        return Err(format!("the graph has {} inputs, not one", inputs.len()));
    };
    use tract_onnx::pb::type_proto::Value as Type;
    let Some(Type::TensorType(t)) = input.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
        return Err(format!("input `{}` is not a tensor", input.name));
    };
    if t.elem_type != PbType::Float as i32 {
        return Err(format!("input `{}` is not FP32", input.name));
    }
    let width = match t.shape.as_ref().map(|s| &s.dim[..]) {
        Some([_, d]) => {
            use tract_onnx::pb::tensor_shape_proto::dimension::Value as Dim;
            match d.value {
                Some(Dim::DimValue(w)) if w > 0 => Some(w as usize),
                _ => None,
            }
        }
        None => None,
        Some(_) => return Err(format!("input `{}` is not of rank 2", input.name)),
    };
    Ok((input.name.clone(), width))
}

fn f32_tensor(t: &TensorProto) -> Option<Vec<f32>> {
    if t.data_type != PbType::Float as i32 {
        return None;
    }
    if !t.float_data.is_empty() {
        return Some(t.float_data.clone());
    }
    if !t.raw_data.len().is_multiple_of(4) {
        return None;
    }
    Some(
        t.raw_data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    )
}

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

/// Turns the tree node's attributes into trees (one per tree and class it votes for) and the
/// head that finishes their sums.
fn build(node: &NodeProto, n_features: usize) -> Result<(Ensemble, OnnxTrees), String> {
    let classifier = node.op_type == "TreeEnsembleClassifier";
    if let Some(a) = node
        .attribute
        .iter()
        .find(|a| a.name.ends_with("_as_tensor"))
    {
        return Err(format!("attribute `{}` (double precision)", a.name));
    }
    if attr(node, "classlabels_strings").is_some() {
        return Err("string class labels".into());
    }
    let post = match string(node, "post_transform").as_deref() {
        None | Some("NONE") => Post::None,
        Some("LOGISTIC") => Post::Logistic,
        Some("SOFTMAX") => Post::Softmax,
        Some("SOFTMAX_ZERO") => Post::SoftmaxZero,
        Some("PROBIT") => Post::Probit,
        Some(other) => return Err(format!("post_transform {other}")),
    };
    let prefix = if classifier { "class_" } else { "target_" };
    let w_tree = ints(node, &format!("{prefix}treeids"));
    let w_node = ints(node, &format!("{prefix}nodeids"));
    let w_id = ints(node, &format!("{prefix}ids"));
    let w_value = floats(node, &format!("{prefix}weights"));
    if [w_node.len(), w_id.len(), w_value.len()] != [w_tree.len(); 3] {
        return Err("leaf weight attributes of different lengths".into());
    }
    let width = if classifier {
        ints(node, "classlabels_int64s").len()
    } else {
        attr(node, "n_targets").map_or(1, |a| a.i.max(1) as usize)
    };
    if width == 0 || (classifier && width < 2) {
        return Err(format!("{width} classes"));
    }
    if w_id.iter().any(|&c| c < 0 || c as usize >= width) {
        return Err(format!("a leaf weight for column outside 0..{width}"));
    }
    let aggregate = match string(node, "aggregate_function").as_deref() {
        None | Some("SUM") => Aggregate::Sum32,
        Some("AVERAGE") => Aggregate::Sum32,
        Some("MIN") if !classifier => Aggregate::Min,
        Some("MAX") if !classifier => Aggregate::Max,
        Some(other) => return Err(format!("aggregate_function {other}")),
    };
    let average = string(node, "aggregate_function").as_deref() == Some("AVERAGE");

    // Leaves' weights by (tree, node), in file order (onnxruntime adds them in that order).
    let mut weights: HashMap<(i64, i64), Vec<(usize, f32)>> = HashMap::new();
    for i in 0..w_tree.len() {
        weights
            .entry((w_tree[i], w_node[i]))
            .or_default()
            .push((w_id[i] as usize, w_value[i]));
    }
    let trees = read_trees(node, &weights, n_features)?;
    if aggregate != Aggregate::Sum32 {
        // onnxruntime's MIN/MAX skip columns a row's leaves do not vote for; with one weight on
        // every leaf of a one-target model there are none, and that is all this takes.
        let one_each = width == 1 && trees.iter().all(|t| t.leaves.iter().all(|l| l.len() == 1));
        if !one_each {
            return Err("MIN/MAX aggregation with leaves that do not carry one weight".into());
        }
    }
    let n_trees = trees.len();
    let mut raw_trees = Vec::new();
    for tree in &trees {
        let groups: BTreeSet<usize> = tree.leaves.iter().flatten().map(|&(c, _)| c).collect();
        if groups.len() > 1 {
            // A forest's leaves hold every class's share: one walk adds them all.
            let nodes = tree
                .nodes
                .iter()
                .map(|n| match n {
                    Shape::Split(s) => s.clone(),
                    Shape::Leaf(l) => {
                        let mut values = vec![0.0f32; width];
                        for &(c, w) in &tree.leaves[*l] {
                            values[c] += w;
                        }
                        RawNode::Leaves(values)
                    }
                })
                .collect();
            raw_trees.push(RawTree { nodes, group: 0 });
            continue;
        }
        for &group in &groups {
            let nodes = tree
                .nodes
                .iter()
                .map(|n| match n {
                    Shape::Split(s) => s.clone(),
                    Shape::Leaf(l) => RawNode::Leaf(
                        // Several weights for one column add up, in file order, in f32.
                        tree.leaves[*l]
                            .iter()
                            .filter(|(c, _)| *c == group)
                            .fold(0.0f32, |acc, (_, w)| acc + w),
                    ),
                })
                .collect();
            raw_trees.push(RawTree { nodes, group });
        }
    }
    let mut ensemble = Ensemble::build(RawEnsemble {
        n_features,
        n_groups: width,
        base_margin: vec![0.0; width],
        trees: raw_trees,
        objective: Objective::Raw,
        feature_names: None,
    })?;
    ensemble.set_aggregate(aggregate);

    let base = floats(node, "base_values").to_vec();
    let head = if !classifier {
        if post != Post::None {
            return Err("a regressor with a post_transform".into());
        }
        Head::Regressor {
            divisor: average.then_some(n_trees as f32),
            base: (base.len() == width).then_some(base),
        }
    } else {
        let labels = ints(node, "classlabels_int64s").to_vec();
        let classes: BTreeSet<usize> = w_id.iter().map(|&c| c as usize).collect();
        if width > 2 {
            if !base.is_empty() && base.len() != width {
                return Err(format!("{} base_values for {width} classes", base.len()));
            }
            Head::Multiclass {
                voted: (0..width).map(|c| classes.contains(&c)).collect(),
                labels,
                base: (!base.is_empty()).then_some(base),
            }
        } else if classes.len() == 2 {
            if base.len() > 2 {
                return Err(format!("{} base_values for 2 classes", base.len()));
            }
            Head::BinaryBoth { bases: base }
        } else if classes.first() == Some(&0) {
            if base.len() > 2 {
                return Err(format!("{} base_values for 2 classes", base.len()));
            }
            if post == Post::Probit && base.len() != 2 {
                return Err("PROBIT on a two-class model with one score per row".into());
            }
            Head::BinaryOne {
                labels: [labels[0], labels[1]],
                base: base.first().copied().unwrap_or(0.0),
                two_bases: base.len() == 2,
                all_positive: w_value.iter().all(|&w| w >= 0.0),
            }
        } else {
            return Err("two-class trees whose leaves all vote for the second class".into());
        }
    };
    Ok((
        ensemble,
        OnnxTrees {
            input: String::new(),
            outputs: Vec::new(),
            head,
            post,
            width,
        },
    ))
}

enum Shape {
    Split(RawNode),
    /// Index into the tree's `leaves`.
    Leaf(usize),
}

struct TreeShape {
    nodes: Vec<Shape>,
    leaves: Vec<Vec<(usize, f32)>>,
}

/// The trees in tree-id order, node 0 the root (the node listed first), children by index.
fn read_trees(
    node: &NodeProto,
    weights: &HashMap<(i64, i64), Vec<(usize, f32)>>,
    n_features: usize,
) -> Result<Vec<TreeShape>, String> {
    let tree_ids = ints(node, "nodes_treeids");
    let node_ids = ints(node, "nodes_nodeids");
    let features = ints(node, "nodes_featureids");
    let values = floats(node, "nodes_values");
    let modes: Vec<String> = attr(node, "nodes_modes")
        .map(|a| {
            a.strings
                .iter()
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default();
    let trues = ints(node, "nodes_truenodeids");
    let falses = ints(node, "nodes_falsenodeids");
    let tracks = ints(node, "nodes_missing_value_tracks_true");
    let n = tree_ids.len();
    if n == 0 {
        return Err("the ensemble has no nodes".into());
    }
    if [
        node_ids.len(),
        features.len(),
        values.len(),
        modes.len(),
        trues.len(),
        falses.len(),
    ] != [n; 6]
        || (!tracks.is_empty() && tracks.len() != n)
    {
        return Err("node attributes of different lengths".into());
    }
    let mut by_tree: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
    for (i, &t) in tree_ids.iter().enumerate() {
        by_tree.entry(t).or_default().push(i);
    }
    let mut trees = Vec::with_capacity(by_tree.len());
    for (tree_id, members) in by_tree {
        let err = |m: String| format!("tree {tree_id}: {m}");
        let local: HashMap<i64, usize> = members
            .iter()
            .enumerate()
            .map(|(k, &i)| (node_ids[i], k))
            .collect();
        if local.len() != members.len() {
            return Err(err("a node id is used twice".into()));
        }
        // The root is the node no other node points to.
        let mut pointed = vec![false; members.len()];
        let child = |id: i64| {
            local
                .get(&id)
                .copied()
                .ok_or_else(|| err(format!("a child id {id} is not in the tree")))
        };
        let mut nodes = Vec::with_capacity(members.len());
        let mut leaves = Vec::new();
        for &i in &members {
            let mode = modes[i].as_str();
            if mode == "LEAF" {
                leaves.push(
                    weights
                        .get(&(tree_id, node_ids[i]))
                        .cloned()
                        .unwrap_or_default(),
                );
                nodes.push(Shape::Leaf(leaves.len() - 1));
                continue;
            }
            let (t, f) = (child(trues[i])?, child(falses[i])?);
            pointed[t] = true;
            pointed[f] = true;
            let feature = u32::try_from(features[i])
                .ok()
                .filter(|&f| (f as usize) < n_features)
                .ok_or_else(|| {
                    err(format!(
                        "feature {} outside the input's {n_features}",
                        features[i]
                    ))
                })?;
            let nan_true = tracks.get(i).copied().unwrap_or(0) != 0;
            let v = values[i];
            // The ensemble goes left when its test holds: the true branch for <=, <, ==; the
            // false branch for the negations >, >=, != (NaN fails every test, so there it
            // goes where the mode sends missing values).
            let (test, left_is_true, nan_left) = match mode {
                "BRANCH_LEQ" => (Test::LessEq(v), true, nan_true),
                "BRANCH_LT" => (Test::Less(v), true, nan_true),
                "BRANCH_EQ" => (Test::Equal(v), true, nan_true),
                "BRANCH_GT" => (Test::LessEq(v), false, !nan_true),
                "BRANCH_GTE" => (Test::Less(v), false, !nan_true),
                // NaN != v holds, so NaN takes the true branch whatever the flag says.
                "BRANCH_NEQ" => (Test::Equal(v), false, false),
                other => return Err(err(format!("node mode {other}"))),
            };
            let (left, right) = if left_is_true { (t, f) } else { (f, t) };
            nodes.push(Shape::Split(RawNode::Split {
                feature,
                test,
                default_left: nan_left,
                zero_is_missing: false,
                left,
                right,
            }));
        }
        let roots: Vec<usize> = (0..members.len()).filter(|&k| !pointed[k]).collect();
        let [root] = roots[..] else {
            return Err(err(format!("{} root nodes", roots.len())));
        };
        // The ensemble's trees start at node 0.
        if root != 0 {
            nodes.swap(0, root);
            let fix = |k: usize| match k {
                0 => root,
                k if k == root => 0,
                k => k,
            };
            for n in &mut nodes {
                if let Shape::Split(RawNode::Split { left, right, .. }) = n {
                    *left = fix(*left);
                    *right = fix(*right);
                }
            }
        }
        trees.push(TreeShape { nodes, leaves });
    }
    Ok(trees)
}

impl OnnxTrees {
    /// The tree node's label and scores from the ensemble's margins, as onnxruntime computes
    /// them (in f32); labels are empty for regressors.
    pub fn finish(&self, margins: &[f64]) -> (Vec<i64>, Vec<f32>) {
        let mut labels = Vec::new();
        let mut scores = Vec::with_capacity(margins.len());
        for row in margins.chunks_exact(self.width) {
            let s = |k: usize| row[k] as f32;
            match &self.head {
                Head::Regressor { divisor, base } => {
                    for k in 0..self.width {
                        let mut v = s(k);
                        if let Some(d) = divisor {
                            v /= d;
                        }
                        if let Some(b) = base {
                            v += b[k];
                        }
                        scores.push(v);
                    }
                }
                Head::Multiclass {
                    labels: names,
                    base,
                    voted,
                } => {
                    let start = scores.len();
                    scores.extend(
                        (0..self.width).map(|k| s(k) + base.as_ref().map_or(0.0, |b| b[k])),
                    );
                    let row = &mut scores[start..];
                    let mut best: Option<(usize, f32)> = None;
                    for (k, &v) in row.iter().enumerate() {
                        if (base.is_some() || voted[k]) && best.is_none_or(|(_, m)| v > m) {
                            best = Some((k, v));
                        }
                    }
                    labels.push(best.map_or(names[0], |(k, _)| names[k]));
                    post_transform(self.post, row);
                }
                Head::BinaryBoth { bases } => {
                    let mut pair = match bases[..] {
                        [] => [s(0), s(1)],
                        [b0] => [s(0) + b0, s(1)],
                        [_, b1] | [_, b1, ..] => {
                            // onnxruntime uses the first class's sum and the second base only.
                            let pos = s(0) + b1;
                            [-pos, pos]
                        }
                    };
                    // onnxruntime answers its positive/negative labels 1/0 here, not the
                    // class labels.
                    labels.push(i64::from(pair[1] > 0.0));
                    post_transform(self.post, &mut pair);
                    scores.extend(pair);
                }
                Head::BinaryOne {
                    labels: names,
                    base,
                    two_bases,
                    all_positive,
                } => {
                    let pos = s(0) + base;
                    let threshold = if *all_positive { 0.5 } else { 0.0 };
                    labels.push(names[usize::from(pos > threshold)]);
                    let pair = if *two_bases {
                        let mut pair = [pos, 0.0];
                        post_transform(self.post, &mut pair);
                        pair
                    } else if *all_positive {
                        let p = if self.post == Post::Logistic {
                            logistic(pos)
                        } else {
                            pos
                        };
                        [1.0 - p, p]
                    } else if self.post == Post::Logistic {
                        [logistic(-pos), logistic(pos)]
                    } else {
                        [-pos, pos]
                    };
                    scores.extend(pair);
                }
            }
        }
        (labels, scores)
    }
}

/// Applies an output's steps to a copy of the scores.
pub(crate) fn apply_steps(steps: &[Step], scores: &[f32], width: usize) -> Vec<f32> {
    let mut out = scores.to_vec();
    for step in steps {
        let c = |c: &[f32], i: usize| if c.len() == 1 { c[0] } else { c[i % width] };
        match step {
            Step::Add(k) => out.iter_mut().enumerate().for_each(|(i, v)| *v += c(k, i)),
            Step::Sub(k) => out.iter_mut().enumerate().for_each(|(i, v)| *v -= c(k, i)),
            Step::Mul(k) => out.iter_mut().enumerate().for_each(|(i, v)| *v *= c(k, i)),
            Step::Div(k) => out.iter_mut().enumerate().for_each(|(i, v)| *v /= c(k, i)),
            // The standard operator: 1 / (1 + e^-x), no onnxruntime-specific form.
            Step::Sigmoid => out.iter_mut().for_each(|v| *v = sigmoid(*v)),
        }
    }
    out
}

fn sigmoid(x: f32) -> f32 {
    (1.0 / (1.0 + (-f64::from(x)).exp())) as f32
}

/// onnxruntime's ComputeLogistic: symmetric around 0 so large negative inputs keep precision.
fn logistic(x: f32) -> f32 {
    let v = 1.0 / (1.0 + (-x.abs()).exp());
    if x < 0.0 { 1.0 - v } else { v }
}

fn post_transform(post: Post, row: &mut [f32]) {
    match post {
        Post::None => {}
        Post::Logistic => row.iter_mut().for_each(|v| *v = logistic(*v)),
        Post::Softmax => {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0f32;
            for v in row.iter_mut() {
                *v = (*v - max).exp();
                sum += *v;
            }
            row.iter_mut().for_each(|v| *v /= sum);
        }
        Post::SoftmaxZero => {
            // Zero scores (classes without a vote) stay zero and take no share.
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0f32;
            for v in row.iter_mut() {
                if v.abs() > 1e-7 {
                    *v = (*v - max).exp();
                    sum += *v;
                } else {
                    *v = 0.0;
                }
            }
            if sum > 0.0 {
                row.iter_mut().for_each(|v| *v /= sum);
            }
        }
        Post::Probit => row.iter_mut().for_each(|v| *v = probit(*v)),
    }
}

/// onnxruntime's ComputeProbit: sqrt(2) * erfinv(2p - 1) with Winitzki's approximation of
/// erfinv (a = 0.147), in f32, so outputs match it rather than the exact function.
fn probit(p: f32) -> f32 {
    let x = 2.0 * p - 1.0;
    let sign = if x < 0.0 { -1.0f32 } else { 1.0 };
    let w = (1.0 - x) * (1.0 + x);
    let ln = w.ln();
    #[allow(clippy::approx_constant)] // onnxruntime's own truncated pi
    let a = 2.0 / (3.14159f32 * 0.147) + 0.5 * ln;
    let b = 1.0 / 0.147 * ln;
    let c = -a + (a * a - b).sqrt();
    std::f32::consts::SQRT_2 * sign * c.sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::pb::attribute_proto::AttributeType;
    use tract_onnx::pb::{
        TensorShapeProto, TypeProto, ValueInfoProto, tensor_shape_proto, type_proto,
    };

    /// A stump's leaf weights `(class, weight)`: (true branch, false branch).
    type Stump = (Vec<(i64, f32)>, Vec<(i64, f32)>);

    fn ints_attr(name: &str, v: &[i64]) -> AttributeProto {
        AttributeProto {
            name: name.into(),
            r#type: AttributeType::Ints as i32,
            ints: v.to_vec(),
            ..Default::default()
        }
    }

    fn floats_attr(name: &str, v: &[f32]) -> AttributeProto {
        AttributeProto {
            name: name.into(),
            r#type: AttributeType::Floats as i32,
            floats: v.to_vec(),
            ..Default::default()
        }
    }

    fn string_attr(name: &str, v: &str) -> AttributeProto {
        AttributeProto {
            name: name.into(),
            r#type: AttributeType::String as i32,
            s: v.as_bytes().to_vec(),
            ..Default::default()
        }
    }

    fn strings_attr(name: &str, v: &[&str]) -> AttributeProto {
        AttributeProto {
            name: name.into(),
            r#type: AttributeType::Strings as i32,
            strings: v.iter().map(|s| s.as_bytes().to_vec()).collect(),
            ..Default::default()
        }
    }

    fn input(name: &str, width: i64) -> ValueInfoProto {
        let dim = |d: i64| tensor_shape_proto::Dimension {
            value: Some(if d > 0 {
                tensor_shape_proto::dimension::Value::DimValue(d)
            } else {
                tensor_shape_proto::dimension::Value::DimParam("N".into())
            }),
            ..Default::default()
        };
        ValueInfoProto {
            name: name.into(),
            r#type: Some(TypeProto {
                value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                    elem_type: PbType::Float as i32,
                    shape: Some(TensorShapeProto {
                        dim: vec![dim(-1), dim(width)],
                    }),
                })),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn output(name: &str) -> ValueInfoProto {
        ValueInfoProto {
            name: name.into(),
            ..Default::default()
        }
    }

    /// Trees of one split each on feature `f` at 1.0, listed leaves first so the root is not
    /// node 0: leaf weights (true branch, false branch) per tree.
    fn stumps(
        op: &str,
        mode: &str,
        tracks: i64,
        leaves: &[Stump],
        extra: Vec<AttributeProto>,
    ) -> NodeProto {
        let n = leaves.len() as i64;
        let tree = |t: i64| [t, t, t];
        let prefix = if op == "TreeEnsembleClassifier" {
            "class_"
        } else {
            "target_"
        };
        let (mut wt, mut wn, mut wi, mut wv) = (vec![], vec![], vec![], vec![]);
        for (t, (on_true, on_false)) in leaves.iter().enumerate() {
            for (node, weights) in [(5, on_true), (7, on_false)] {
                for &(class, w) in weights {
                    wt.push(t as i64);
                    wn.push(node);
                    wi.push(class);
                    wv.push(w);
                }
            }
        }
        let mut attribute = vec![
            ints_attr("nodes_treeids", &(0..n).flat_map(tree).collect::<Vec<_>>()),
            ints_attr("nodes_nodeids", &[5, 7, 0].repeat(n as usize)),
            ints_attr("nodes_featureids", &[0, 0, 1].repeat(n as usize)),
            floats_attr("nodes_values", &[0.0, 0.0, 1.0].repeat(n as usize)),
            strings_attr("nodes_modes", &["LEAF", "LEAF", mode].repeat(n as usize)),
            ints_attr("nodes_truenodeids", &[0, 0, 5].repeat(n as usize)),
            ints_attr("nodes_falsenodeids", &[0, 0, 7].repeat(n as usize)),
            ints_attr(
                "nodes_missing_value_tracks_true",
                &[0, 0, tracks].repeat(n as usize),
            ),
            ints_attr(&format!("{prefix}treeids"), &wt),
            ints_attr(&format!("{prefix}nodeids"), &wn),
            ints_attr(&format!("{prefix}ids"), &wi),
            floats_attr(&format!("{prefix}weights"), &wv),
        ];
        attribute.extend(extra);
        let outputs = if op == "TreeEnsembleClassifier" {
            vec!["label".into(), "scores".into()]
        } else {
            vec!["scores".into()]
        };
        NodeProto {
            op_type: op.into(),
            domain: ML_DOMAIN.into(),
            input: vec!["X".into()],
            output: outputs,
            attribute,
            ..Default::default()
        }
    }

    fn model(nodes: Vec<NodeProto>, outputs: &[&str]) -> ModelProto {
        ModelProto {
            graph: Some(GraphProto {
                node: nodes,
                input: vec![input("X", 2)],
                output: outputs.iter().map(|o| output(o)).collect(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Runs `rows` (feature 1 is the split's) through the graph: (labels, first output's values).
    fn run(m: &ModelProto, rows: &[f32]) -> (Vec<i64>, Vec<f32>) {
        let (ensemble, graph) = read(m, None).unwrap();
        let x: Vec<f32> = rows.iter().flat_map(|&v| [0.0, v]).collect();
        let (labels, scores) = graph.finish(&ensemble.margins(&x));
        let out = graph
            .outputs
            .iter()
            .find(|o| o.source == Source::Scores)
            .unwrap();
        (labels, apply_steps(&out.steps, &scores, graph.width))
    }

    fn regressor(mode: &str, tracks: i64) -> Vec<f32> {
        let leaves = [(vec![(0, 10.0)], vec![(0, 20.0)])];
        let m = model(
            vec![stumps(
                "TreeEnsembleRegressor",
                mode,
                tracks,
                &leaves,
                vec![],
            )],
            &["scores"],
        );
        run(&m, &[0.5, 1.0, 1.5, f32::NAN]).1
    }

    #[test]
    fn every_node_mode_and_missing_value_rule() {
        let (t, f) = (10.0, 20.0);
        // rows 0.5, 1.0 (the threshold), 1.5, NaN
        let cases = [
            ("BRANCH_LEQ", [t, t, f]),
            ("BRANCH_LT", [t, f, f]),
            ("BRANCH_GTE", [f, t, t]),
            ("BRANCH_GT", [f, f, t]),
            ("BRANCH_EQ", [f, t, f]),
            ("BRANCH_NEQ", [t, f, t]),
        ];
        for (mode, want) in cases {
            for tracks in [0, 1] {
                let got = regressor(mode, tracks);
                assert_eq!(&got[..3], &want, "{mode}");
                // NaN fails every comparison but !=; the flag sends it to the true branch.
                let nan = if mode == "BRANCH_NEQ" || tracks == 1 {
                    t
                } else {
                    f
                };
                assert_eq!(got[3], nan, "{mode} tracks_true={tracks}");
            }
        }
    }

    #[test]
    fn aggregate_functions_and_base_values() {
        let leaves = [
            (vec![(0, 1.0)], vec![(0, 4.0)]),
            (vec![(0, 3.0)], vec![(0, -2.0)]),
        ];
        let agg = |f: &str| {
            let m = model(
                vec![stumps(
                    "TreeEnsembleRegressor",
                    "BRANCH_LEQ",
                    0,
                    &leaves,
                    vec![
                        string_attr("aggregate_function", f),
                        floats_attr("base_values", &[0.5]),
                    ],
                )],
                &["scores"],
            );
            run(&m, &[0.0, 2.0]).1
        };
        assert_eq!(agg("SUM"), [4.5, 2.5]);
        assert_eq!(agg("AVERAGE"), [2.5, 1.5]);
        assert_eq!(agg("MIN"), [1.5, -1.5]);
        assert_eq!(agg("MAX"), [3.5, 4.5]);
    }

    fn classifier(labels: &[i64], leaves: &[Stump], post: &str, base: &[f32]) -> ModelProto {
        let mut extra = vec![
            ints_attr("classlabels_int64s", labels),
            string_attr("post_transform", post),
        ];
        if !base.is_empty() {
            extra.push(floats_attr("base_values", base));
        }
        model(
            vec![stumps(
                "TreeEnsembleClassifier",
                "BRANCH_LEQ",
                0,
                leaves,
                extra,
            )],
            &["label", "scores"],
        )
    }

    fn close(got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{got:?} vs {want:?}");
        }
    }

    #[test]
    fn multiclass_post_transforms() {
        let leaves = [(
            vec![(0, 1.0), (1, 2.0), (2, 0.0)],
            vec![(0, -1.0), (1, 0.5)],
        )];
        let m = |post| classifier(&[3, 5, 7], &leaves, post, &[]);
        let (labels, none) = run(&m("NONE"), &[0.0, 2.0]);
        assert_eq!(labels, [5, 5]);
        close(&none, &[1.0, 2.0, 0.0, -1.0, 0.5, 0.0]);
        let (_, logistic) = run(&m("LOGISTIC"), &[0.0]);
        let sig = |x: f32| 1.0 / (1.0 + (-x).exp());
        close(&logistic, &[sig(1.0), sig(2.0), 0.5]);
        let (_, softmax) = run(&m("SOFTMAX"), &[0.0]);
        let e: Vec<f32> = [1.0f32, 2.0, 0.0].iter().map(|v| v.exp()).collect();
        let sum: f32 = e.iter().sum();
        close(&softmax, &[e[0] / sum, e[1] / sum, e[2] / sum]);
        // A zero score stays zero and takes no share.
        let (_, zero) = run(&m("SOFTMAX_ZERO"), &[0.0]);
        let z = e[0] + e[1];
        close(&zero, &[e[0] / z, e[1] / z, 0.0]);
        // sqrt(2) erfinv(2p - 1), to onnxruntime's approximation.
        let (_, probit) = run(&m("PROBIT"), &[0.0]);
        assert!(probit.iter().all(|v| v.is_nan() || v.is_infinite()));
        let probs = [(vec![(0, 0.5), (1, 0.8413), (2, 0.1)], vec![(0, 0.5)])];
        let (_, probit) = run(&classifier(&[0, 1, 2], &probs, "PROBIT", &[]), &[0.0]);
        close(&probit[..1], &[0.0]);
        assert!((probit[1] - 1.0).abs() < 5e-3, "{probit:?}");
        assert!((probit[2] + 1.2816).abs() < 5e-3, "{probit:?}");
    }

    #[test]
    fn argmax_skips_classes_no_leaf_votes_for_unless_there_are_base_values() {
        let leaves = [(vec![(0, -1.0), (1, -2.0)], vec![(0, -3.0), (1, -0.5)])];
        let (labels, _) = run(&classifier(&[0, 1, 2], &leaves, "NONE", &[]), &[0.0, 2.0]);
        assert_eq!(labels, [0, 1]);
        let (labels, scores) = run(
            &classifier(&[0, 1, 2], &leaves, "NONE", &[0.0, 0.0, 0.0]),
            &[0.0],
        );
        assert_eq!(labels, [2]);
        close(&scores, &[-1.0, -2.0, 0.0]);
    }

    #[test]
    fn two_classes_with_one_score_per_row() {
        // A forest's vote: all weights positive, the label flips above 0.5.
        let forest = [
            (vec![(0, 0.25)], vec![(0, 0.5)]),
            (vec![(0, 0.25)], vec![(0, 0.125)]),
        ];
        let (labels, scores) = run(&classifier(&[4, 9], &forest, "NONE", &[]), &[0.0, 2.0]);
        assert_eq!(labels, [4, 9]);
        close(&scores, &[0.5, 0.5, 0.375, 0.625]);
        // Boosting: mixed signs, threshold 0, [1-p, p] only when all weights are positive.
        let boost = [(vec![(0, -0.5)], vec![(0, 0.25)])];
        let (labels, scores) = run(
            &classifier(&[0, 1], &boost, "LOGISTIC", &[0.1]),
            &[0.0, 2.0],
        );
        assert_eq!(labels, [0, 1]);
        let sig = |x: f32| 1.0 / (1.0 + (-x).exp());
        close(&scores, &[sig(0.4), sig(-0.4), sig(-0.35), sig(0.35)]);
        let (_, scores) = run(&classifier(&[0, 1], &boost, "NONE", &[0.1]), &[0.0]);
        close(&scores, &[0.4, -0.4]);
        // Two base values: [s + b0, 0] through the post transform.
        let (_, scores) = run(&classifier(&[0, 1], &boost, "SOFTMAX", &[0.1, 7.0]), &[0.0]);
        let (a, b) = ((-0.4f32).exp(), 1.0f32);
        close(&scores, &[a / (a + b), b / (a + b)]);
        // Leaves voting for both classes: the label is 1 when the second score is positive.
        let both = [(vec![(0, 0.25), (1, 0.75)], vec![(0, 0.5), (1, -0.5)])];
        let (labels, scores) = run(&classifier(&[3, 8], &both, "NONE", &[]), &[0.0, 2.0]);
        assert_eq!(labels, [1, 0]);
        close(&scores, &[0.25, 0.75, 0.5, -0.5]);
    }

    #[test]
    fn skl2onnx_tails_are_applied_and_other_graphs_refused() {
        let boost = [(vec![(0, -0.5)], vec![(0, 0.25)])];
        let mut m = classifier(&[0, 1], &boost, "NONE", &[0.1]);
        let graph = m.graph.as_mut().unwrap();
        graph.initializer.push(TensorProto {
            name: "two".into(),
            dims: vec![1],
            data_type: PbType::Float as i32,
            float_data: vec![2.0],
            ..Default::default()
        });
        let node = |op: &str, inputs: &[&str], out: &str| NodeProto {
            op_type: op.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.into()],
            ..Default::default()
        };
        graph.node.extend([
            node("Mul", &["scores", "two"], "scaled"),
            node("Sigmoid", &["scaled"], "p"),
            node("Identity", &["p"], "probabilities"),
        ]);
        graph.output = vec![output("label"), output("probabilities")];
        let (_, scores) = run(&m, &[0.0]);
        let sig = |x: f32| 1.0 / (1.0 + (-x).exp());
        close(&scores, &[sig(0.8), sig(-0.8)]);

        let refused = |edit: &dyn Fn(&mut GraphProto)| {
            let mut m = classifier(&[0, 1], &boost, "NONE", &[]);
            edit(m.graph.as_mut().unwrap());
            read(&m, None).unwrap_err()
        };
        let zipmap = refused(&|g| {
            g.node.push(NodeProto {
                op_type: "ZipMap".into(),
                domain: ML_DOMAIN.into(),
                input: vec!["scores".into()],
                output: vec!["map".into()],
                ..Default::default()
            })
        });
        assert!(zipmap.contains("ZipMap"), "{zipmap}");
        let other = refused(&|g| g.node.push(node("Relu", &["scores"], "r")));
        assert!(other.contains("Relu"), "{other}");
        let inputs = refused(&|g| g.input.push(input("Y", 2)));
        assert!(inputs.contains("2 inputs"), "{inputs}");
        let strings = refused(&|g| {
            g.node[0]
                .attribute
                .push(strings_attr("classlabels_strings", &["a", "b"]))
        });
        assert!(strings.contains("string class labels"), "{strings}");
    }
}
