//! The format-neutral tree ensemble: what the XGBoost and LightGBM readers produce
//! ([`RawTree`]), its flattened form ([`Ensemble`]) and the scorer.
//!
//! Splits are normalised to `x < threshold` (f32) wherever that is exact, so the scorer has one
//! hot path whatever library wrote the model; the readers translate their own rules into it,
//! and the rare tests that have no exact `<` form (equality, `<= +inf`) take a slower path.

/// One node of a tree as a reader builds it, children by index into the same tree.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum RawNode {
    Leaf(f32),
    /// One value per output group: the tree adds to every column in one walk (ONNX-ML forests,
    /// whose leaves hold every class's share). A tree's leaves are all of one kind.
    #[cfg_attr(not(feature = "tract"), allow(dead_code))] // built by the ONNX-ML reader only
    Leaves(Vec<f32>),
    Split {
        feature: u32,
        test: Test,
        /// Where a missing value goes (NaN, and zero when `zero_is_missing`).
        default_left: bool,
        /// LightGBM's `missing_type=Zero`: values within ±[`ZERO_THRESHOLD`] count as missing.
        zero_is_missing: bool,
        left: usize,
        right: usize,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Test {
    /// Left when `x < threshold`.
    Less(f32),
    /// Left when `x <= threshold` (ONNX-ML `BRANCH_LEQ`); flattened to `x < next_up(t)`.
    #[cfg_attr(not(feature = "tract"), allow(dead_code))] // built by the ONNX-ML reader only
    LessEq(f32),
    /// Left when `x == threshold` (ONNX-ML `BRANCH_EQ`).
    #[cfg_attr(not(feature = "tract"), allow(dead_code))] // built by the ONNX-ML reader only
    Equal(f32),
    /// Left when the category `trunc(x)` is set in the bitset (32 categories per word);
    /// NaN and negative values go right.
    InSet(Vec<u32>),
}

/// LightGBM's `kZeroThreshold`: what counts as zero for `missing_type=Zero`.
pub(crate) const ZERO_THRESHOLD: f32 = 1e-35;

/// A tree as read from a file: node 0 is the root.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RawTree {
    pub nodes: Vec<RawNode>,
    /// The output column (class) whose margin this tree adds to; ignored when its leaves are
    /// [`RawNode::Leaves`].
    pub group: usize,
}

/// How margins become the model's answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Objective {
    /// `label` (margin > 0) and `probabilities` [1 - p, p] with p = sigmoid(scale * margin).
    BinaryLogistic { scale: f64 },
    /// `label` (argmax) and `probabilities` (softmax over the classes' margins).
    Softmax,
    /// `predictions` = margin.
    Identity,
    /// `predictions` = sigmoid(margin).
    Logistic,
    /// `predictions` = exp(margin).
    Exp,
    /// The margins as they are, any number of columns: the caller finishes them (ONNX-ML
    /// graphs, whose post transforms live in `super::onnx`).
    #[cfg_attr(not(feature = "tract"), allow(dead_code))] // built by the ONNX-ML reader only
    Raw,
}

/// How the trees' leaves combine into a column's margin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(feature = "tract"), allow(dead_code))] // built by the ONNX-ML reader only
pub(crate) enum Aggregate {
    Sum,
    /// Summed in f32, tree by tree, as onnxruntime does: a forest's vote that lands on a
    /// threshold (k/n = 0.5) then falls on the same side as there.
    Sum32,
    Min,
    Max,
}

impl Objective {
    pub fn is_classifier(self) -> bool {
        matches!(self, Objective::BinaryLogistic { .. } | Objective::Softmax)
    }
}

/// What a reader hands to [`Ensemble::build`].
#[derive(Debug, Clone)]
pub(crate) struct RawEnsemble {
    pub n_features: usize,
    /// Margin columns: the number of classes for multiclass models, else 1.
    pub n_groups: usize,
    /// Added to every row's margins before the trees (one per group).
    pub base_margin: Vec<f64>,
    pub trees: Vec<RawTree>,
    pub objective: Objective,
    pub feature_names: Option<Vec<String>>,
}

// Node layout: 12 bytes, children of a split stored side by side (right = left + 1), so a
// split needs one child index and the step is `left + !go_left`. A leaf steps to itself (its
// threshold is NaN, so it always goes "right", and its `left` is its own index - 1): a walk can
// take a fixed number of steps, the tree's depth, with no test for having arrived.
const LEAF: u32 = 1 << 31;
const DEFAULT_LEFT: u32 = 1 << 30;
/// Categorical or zero-as-missing splits: taken off the hot path.
const SPECIAL: u32 = 1 << 29;
const FEATURE_MASK: u32 = SPECIAL - 1;

#[derive(Debug, Clone, Copy)]
struct Node {
    /// Split: threshold; leaf: NaN; categorical split: `special` index in `to_bits`.
    value: f32,
    /// Feature index plus the flags above.
    feature: u32,
    /// Index of the left child in `Ensemble::nodes`; a leaf's own index - 1 (wrapping).
    left: u32,
}

impl Node {
    fn leaf(at: usize) -> Node {
        Node {
            value: f32::NAN,
            feature: LEAF,
            left: (at as u32).wrapping_sub(1),
        }
    }
}

#[derive(Debug, Clone)]
enum Special {
    /// A comparison the fast path cannot do: missing values (NaN, and near-zero values when
    /// `zero_missing`) take the default direction, others go left when `op` holds.
    Compare {
        op: Compare,
        threshold: f32,
        zero_missing: bool,
    },
    Categories {
        start: u32,
        len: u32,
    },
}

#[derive(Debug, Clone, Copy)]
enum Compare {
    Less,
    LessEq,
    Equal,
}

/// A model ready to score: all trees' nodes in one array, each tree's nodes contiguous.
#[derive(Debug, Clone)]
pub(crate) struct Ensemble {
    n_features: usize,
    n_groups: usize,
    base_margin: Vec<f64>,
    nodes: Vec<Node>,
    /// Per node: a leaf's value (or, for [`RawNode::Leaves`], its start in `leaf_vectors` in
    /// the bits); 0 for splits.
    leaf_values: Vec<f32>,
    roots: Vec<u32>,
    /// Per tree: the fewest and the most steps from the root to a leaf.
    depths: Vec<(u32, u32)>,
    /// Per tree: whether a split needs [`Ensemble::special_goes_left`]; the other trees walk
    /// with no branch at all.
    special_trees: Vec<bool>,
    groups: Vec<u32>,
    specials: Vec<Special>,
    bitsets: Vec<u32>,
    /// The values of [`RawNode::Leaves`] leaves, `n_groups` each; such a leaf's `value` holds
    /// the start index in its bits.
    leaf_vectors: Vec<f32>,
    objective: Objective,
    aggregate: Aggregate,
    feature_names: Option<Vec<String>>,
}

/// Rows scored together: their features stay in L1 while every tree passes over them.
const ROW_BLOCK: usize = 128;
/// Walks in flight at once: rows of a block, or trees of one row (measured: 16 was slower).
const LANES: usize = 8;

impl Ensemble {
    /// Checks and flattens `raw`; the message says which tree and node is wrong.
    pub fn build(raw: RawEnsemble) -> Result<Ensemble, String> {
        if raw.n_features == 0 {
            return Err("the model has no features".into());
        }
        // The walk reads rows widened with each feature's negation (see `widen`).
        if raw.n_features > (FEATURE_MASK / 2) as usize {
            return Err(format!(
                "{} features is more than supported",
                raw.n_features
            ));
        }
        if raw.n_groups == 0 || raw.base_margin.len() != raw.n_groups {
            return Err(format!(
                "{} base margins for {} output groups",
                raw.base_margin.len(),
                raw.n_groups
            ));
        }
        if raw.objective == Objective::Softmax && raw.n_groups < 2 {
            return Err("a multiclass model needs at least 2 classes".into());
        }
        if !matches!(raw.objective, Objective::Softmax | Objective::Raw) && raw.n_groups != 1 {
            return Err(format!(
                "{} trees per iteration for a single-output objective",
                raw.n_groups
            ));
        }
        let mut e = Ensemble {
            n_features: raw.n_features,
            n_groups: raw.n_groups,
            base_margin: raw.base_margin,
            nodes: Vec::new(),
            leaf_values: Vec::new(),
            roots: Vec::with_capacity(raw.trees.len()),
            depths: Vec::with_capacity(raw.trees.len()),
            special_trees: Vec::with_capacity(raw.trees.len()),
            groups: Vec::with_capacity(raw.trees.len()),
            specials: Vec::new(),
            bitsets: Vec::new(),
            leaf_vectors: Vec::new(),
            objective: raw.objective,
            aggregate: Aggregate::Sum,
            feature_names: raw.feature_names,
        };
        for (t, tree) in raw.trees.iter().enumerate() {
            e.push_tree(tree).map_err(|m| format!("tree {t}: {m}"))?;
        }
        if e.nodes.len() > (u32::MAX >> 1) as usize || e.leaf_vectors.len() > u32::MAX as usize {
            return Err("the model has too many nodes".into());
        }
        Ok(e)
    }

    /// Lays the tree out breadth first, siblings side by side. Children always land after
    /// their parent, so scoring terminates even when the file's child links form a cycle;
    /// those are refused here by counting.
    fn push_tree(&mut self, tree: &RawTree) -> Result<(), String> {
        if tree.nodes.is_empty() {
            return Err("the tree has no nodes".into());
        }
        let vector = tree.nodes.iter().any(|n| matches!(n, RawNode::Leaves(_)));
        if !vector && tree.group >= self.n_groups {
            return Err(format!(
                "the tree adds to output {} of {}",
                tree.group, self.n_groups
            ));
        }
        let base = self.nodes.len();
        let specials_before = self.specials.len();
        let mut queue = std::collections::VecDeque::from([(0usize, base, 0u32)]);
        self.nodes.push(Node::leaf(base));
        self.leaf_values.push(0.0);
        let mut emitted = 1usize;
        let (mut shallowest, mut deepest) = (u32::MAX, 0);
        while let Some((src, dst, level)) = queue.pop_front() {
            let node = tree
                .nodes
                .get(src)
                .ok_or_else(|| format!("a child index {src} is out of range"))?;
            if !matches!(node, RawNode::Split { .. }) {
                (shallowest, deepest) = (shallowest.min(level), deepest.max(level));
            }
            let flat = match node {
                RawNode::Leaf(_) if vector => {
                    return Err(format!("leaf {src}: one value among per-output leaves"));
                }
                RawNode::Leaf(value) => {
                    self.leaf_values[dst] = *value;
                    Node::leaf(dst)
                }
                RawNode::Leaves(values) => {
                    if values.len() != self.n_groups {
                        return Err(format!(
                            "leaf {src} has {} values for {} outputs",
                            values.len(),
                            self.n_groups
                        ));
                    }
                    let start = self.leaf_vectors.len() as u32;
                    self.leaf_vectors.extend_from_slice(values);
                    self.leaf_values[dst] = f32::from_bits(start);
                    Node::leaf(dst)
                }
                RawNode::Split {
                    feature,
                    test,
                    default_left,
                    zero_is_missing,
                    left,
                    right,
                } => {
                    if *feature as usize >= self.n_features {
                        return Err(format!(
                            "node {src} splits on feature {feature} but the model has {} features",
                            self.n_features
                        ));
                    }
                    emitted += 2;
                    if emitted > tree.nodes.len() {
                        return Err(format!(
                            "node {src}: the child links do not form a tree (a node is reached twice)"
                        ));
                    }
                    let mut flags = *feature;
                    if *default_left {
                        flags |= DEFAULT_LEFT;
                    }
                    // `x <= t` is `x < next_up(t)` for every t but +inf, whose next_up is itself.
                    let exact = match test {
                        Test::Less(t) => Some(*t),
                        Test::LessEq(t) if *t != f32::INFINITY => Some(t.next_up()),
                        _ => None,
                    };
                    // NaN fails `<`, so the fast step sends it to the second child. Where it
                    // should go left, the split is mirrored: children swapped and the test
                    // `x >= t`, which is `-x < next_up(-t)` on the negated feature. Left by
                    // default with a threshold of -inf or NaN, only NaN goes left, which no
                    // `<` test says: the slow path. `fast` is (threshold, mirrored).
                    let fast = match exact.filter(|_| !zero_is_missing) {
                        Some(t) if !*default_left => Some((t, false)),
                        Some(t) if t > f32::NEG_INFINITY => Some(((-t).next_up(), true)),
                        _ => None,
                    };
                    let mirrored = matches!(fast, Some((_, true)));
                    let child = self.nodes.len();
                    self.nodes
                        .extend([Node::leaf(child), Node::leaf(child + 1)]);
                    self.leaf_values.extend([0.0, 0.0]);
                    let (first, second) = if mirrored {
                        (right, left)
                    } else {
                        (left, right)
                    };
                    queue.push_back((*first, child, level + 1));
                    queue.push_back((*second, child + 1, level + 1));
                    if mirrored {
                        flags = *feature + self.n_features as u32;
                    }
                    let value = match test {
                        _ if let Some((t, _)) = fast => t,
                        Test::Less(t) | Test::LessEq(t) | Test::Equal(t) => {
                            flags |= SPECIAL;
                            let (op, threshold) = match (test, exact) {
                                (_, Some(f)) => (Compare::Less, f),
                                (Test::Equal(_), _) => (Compare::Equal, *t),
                                _ => (Compare::LessEq, *t),
                            };
                            self.push_special(Special::Compare {
                                op,
                                threshold,
                                zero_missing: *zero_is_missing,
                            })
                        }
                        Test::InSet(bits) => {
                            flags |= SPECIAL;
                            let start = self.bitsets.len() as u32;
                            self.bitsets.extend_from_slice(bits);
                            self.push_special(Special::Categories {
                                start,
                                len: bits.len() as u32,
                            })
                        }
                    };
                    Node {
                        value,
                        feature: flags,
                        left: child as u32,
                    }
                }
            };
            self.nodes[dst] = flat;
        }
        self.roots.push(base as u32);
        self.depths.push((shallowest, deepest));
        self.special_trees
            .push(self.specials.len() > specials_before);
        self.groups.push(if vector {
            ALL_GROUPS
        } else {
            tree.group as u32
        });
        Ok(())
    }

    fn push_special(&mut self, special: Special) -> f32 {
        self.specials.push(special);
        f32::from_bits(self.specials.len() as u32 - 1)
    }

    pub fn n_features(&self) -> usize {
        self.n_features
    }

    pub fn n_trees(&self) -> usize {
        self.roots.len()
    }

    pub fn objective(&self) -> Objective {
        self.objective
    }

    /// Combines leaves by `aggregate` instead of summing them; the base margins are then added
    /// to the aggregate.
    #[cfg_attr(not(feature = "tract"), allow(dead_code))] // built by the ONNX-ML reader only
    pub fn set_aggregate(&mut self, aggregate: Aggregate) {
        self.aggregate = aggregate;
    }

    /// Classes of a classifier (2 for binary models), 1 for regressors.
    pub fn n_classes(&self) -> usize {
        match self.objective {
            Objective::BinaryLogistic { .. } => 2,
            _ => self.n_groups,
        }
    }

    pub fn feature_names(&self) -> Option<&[String]> {
        self.feature_names.as_deref()
    }

    /// Raw scores, `n_groups` per row, of `rows` (row-major, `n_features` wide).
    pub fn margins(&self, rows: &[f32]) -> Vec<f64> {
        let n_rows = rows.len() / self.n_features;
        let mut out = Vec::with_capacity(n_rows * self.n_groups);
        let mut wide = Vec::with_capacity(rows.len().min(ROW_BLOCK * self.n_features) * 2);
        let start = match self.aggregate {
            Aggregate::Sum | Aggregate::Sum32 => None,
            Aggregate::Min => Some(f64::INFINITY),
            Aggregate::Max => Some(f64::NEG_INFINITY),
        };
        match start {
            None => {
                for _ in 0..n_rows {
                    out.extend_from_slice(&self.base_margin);
                }
            }
            Some(v) => out.resize(n_rows * self.n_groups, v),
        }
        for (block, margins) in rows
            .chunks(ROW_BLOCK * self.n_features)
            .zip(out.chunks_mut(ROW_BLOCK * self.n_groups))
        {
            self.widen(block, &mut wide);
            let block = &wide[..];
            match self.aggregate {
                Aggregate::Sum => self.score_block::<SUM>(block, margins),
                Aggregate::Sum32 => self.score_block::<SUM32>(block, margins),
                Aggregate::Min => self.score_block::<MIN>(block, margins),
                Aggregate::Max => self.score_block::<MAX>(block, margins),
            }
        }
        if start.is_some() {
            for row in out.chunks_exact_mut(self.n_groups) {
                for (m, b) in row.iter_mut().zip(&self.base_margin) {
                    *m += b;
                }
            }
        }
        out
    }

    /// `rows` with each row followed by its negation, the layout the walk reads: mirrored
    /// splits test the negated copy (`n_features + f`), so no step needs a NaN test.
    fn widen(&self, rows: &[f32], wide: &mut Vec<f32>) {
        wide.clear();
        for row in rows.chunks_exact(self.n_features) {
            wide.extend_from_slice(row);
            wide.extend(row.iter().map(|x| -x));
        }
    }

    // Trees in the outer loop: one tree's nodes stay in cache while a block of rows walks it.
    // Rows walk a tree in groups of LANES, one level per step, so the CPU overlaps the
    // independent node loads of different rows instead of waiting on one row's chain.
    // AGG is a const parameter so the sum, the one every format but ONNX-ML uses, compiles to
    // the plain add.
    fn score_block<const AGG: u8>(&self, rows: &[f32], margins: &mut [f64]) {
        let nf = self.n_features * 2;
        let ng = self.n_groups;
        for (t, &root) in self.roots.iter().enumerate() {
            let (group, depths) = (self.groups[t], self.depths[t]);
            for (lanes, margin) in rows
                .chunks_exact(nf * LANES)
                .zip(margins.chunks_exact_mut(ng * LANES))
            {
                let mut at = [root as usize; LANES];
                // Each lane's row, sliced once rather than at every level.
                let rows: [&[f32]; LANES] = std::array::from_fn(|k| &lanes[k * nf..(k + 1) * nf]);
                if self.special_trees[t] {
                    self.walk::<true>(&mut at, &rows, depths);
                } else {
                    self.walk::<false>(&mut at, &rows, depths);
                }
                for (k, ix) in at.iter().enumerate() {
                    let margin = &mut margin[k * ng..(k + 1) * ng];
                    self.add_leaf::<AGG>(margin, group, self.leaf_values[*ix]);
                }
            }
        }
        let full = rows.len() / (nf * LANES) * LANES;
        self.score_rows_alone::<AGG>(&rows[full * nf..], &mut margins[full * ng..]);
    }

    // Rows too few to fill the lanes (one-row requests, a block's tail) walk LANES trees at a
    // time instead, so one row still has independent loads in flight. Each row's leaves are
    // added in tree order, as in `score_block`, so both give the same sums.
    fn score_rows_alone<const AGG: u8>(&self, rows: &[f32], margins: &mut [f64]) {
        let nf = self.n_features * 2;
        let ng = self.n_groups;
        let full = self.roots.len() / LANES * LANES;
        for (row, margin) in rows.chunks_exact(nf).zip(margins.chunks_exact_mut(ng)) {
            for t in (0..full).step_by(LANES) {
                let mut at: [usize; LANES] = std::array::from_fn(|k| self.roots[t + k] as usize);
                let depths = &self.depths[t..t + LANES];
                let shallowest = depths.iter().map(|d| d.0).min().unwrap_or(0);
                let deepest = depths.iter().map(|d| d.1).max().unwrap_or(0);
                let rows = [row; LANES];
                if self.special_trees[t..t + LANES].contains(&true) {
                    self.walk::<true>(&mut at, &rows, (shallowest, deepest));
                } else {
                    self.walk::<false>(&mut at, &rows, (shallowest, deepest));
                }
                for (k, ix) in at.iter().enumerate() {
                    self.add_leaf::<AGG>(margin, self.groups[t + k], self.leaf_values[*ix]);
                }
            }
            for t in full..self.roots.len() {
                let leaf = self.leaf(self.roots[t], row);
                self.add_leaf::<AGG>(margin, self.groups[t], leaf);
            }
        }
    }

    // Moves each lane from `at` to its leaf. A leaf steps to itself, so the lanes take the
    // steps to the shallowest leaf with no test; past it, they stop when all stand on leaves
    // (one test per level, not per lane): deep lopsided trees (LightGBM's) end early, full
    // trees (XGBoost's) never test. SPECIALS false (a tree with no categorical or
    // zero-as-missing split) drops that test from the step.
    #[inline(always)]
    fn walk<const SPECIALS: bool>(
        &self,
        at: &mut [usize; LANES],
        rows: &[&[f32]; LANES],
        (shallowest, deepest): (u32, u32),
    ) {
        for _ in 0..shallowest {
            for (ix, row) in at.iter_mut().zip(rows) {
                *ix = self.step::<SPECIALS>(self.node(*ix), row);
            }
        }
        for _ in shallowest..deepest {
            let mut walking = 0;
            for (ix, row) in at.iter_mut().zip(rows) {
                let node = self.node(*ix);
                walking |= !node.feature & LEAF;
                *ix = self.step::<SPECIALS>(node, row);
            }
            if walking == 0 {
                break;
            }
        }
    }

    /// Adds tree `group`'s leaf `value` to one row's margins.
    #[inline]
    fn add_leaf<const AGG: u8>(&self, margins: &mut [f64], group: u32, value: f32) {
        if group == ALL_GROUPS {
            self.add_leaves::<AGG>(margins, value);
        } else {
            combine::<AGG>(&mut margins[group as usize], value);
        }
    }

    /// Adds a [`RawNode::Leaves`] leaf, whose `value` holds its start in `leaf_vectors`.
    #[inline]
    fn add_leaves<const AGG: u8>(&self, margins: &mut [f64], value: f32) {
        let start = value.to_bits() as usize;
        let values = &self.leaf_vectors[start..start + margins.len()];
        for (m, &v) in margins.iter_mut().zip(values) {
            combine::<AGG>(m, v);
        }
    }

    #[inline]
    fn leaf(&self, root: u32, row: &[f32]) -> f32 {
        let mut at = root as usize;
        while self.nodes[at].feature & LEAF == 0 {
            at = self.step::<true>(self.nodes[at], row);
        }
        self.leaf_values[at]
    }

    /// The node at `at`, an index `step` returned or a root.
    #[inline(always)]
    #[allow(unsafe_code)] // the walk's hot load; measured in loadtests/RESULTS.md
    fn node(&self, at: usize) -> Node {
        debug_assert!(at < self.nodes.len());
        // SAFETY: roots and children are indices `push_tree` wrote into `nodes` (children are
        // pushed before their index is stored), and a leaf steps to its own index.
        unsafe { *self.nodes.get_unchecked(at) }
    }

    /// The child of split `node` that `row` goes to; a leaf's own index for a leaf.
    #[inline(always)]
    #[allow(unsafe_code)] // the walk's hot load; measured in loadtests/RESULTS.md
    fn step<const SPECIALS: bool>(&self, node: Node, row: &[f32]) -> usize {
        let go_left = if !SPECIALS || node.feature & SPECIAL == 0 {
            let f = (node.feature & FEATURE_MASK) as usize;
            debug_assert!(f < row.len());
            // SAFETY: `build` writes fast splits on features < 2 * n_features (the negated
            // half included), leaves use feature 0, and every caller passes a widened row of
            // exactly 2 * n_features (n_features >= 1).
            let x = unsafe { *row.get_unchecked(f) };
            // NaN fails `<`: the second child, which `build` made the default side.
            x < node.value
        } else {
            self.special_goes_left(node, row)
        };
        node.left.wrapping_add(u32::from(!go_left)) as usize
    }

    #[cold]
    fn special_goes_left(&self, node: Node, row: &[f32]) -> bool {
        let x = row[(node.feature & FEATURE_MASK) as usize];
        match self.specials[node.value.to_bits() as usize] {
            Special::Compare {
                op,
                threshold,
                zero_missing,
            } => {
                if x.is_nan() || (zero_missing && (-ZERO_THRESHOLD..=ZERO_THRESHOLD).contains(&x)) {
                    node.feature & DEFAULT_LEFT != 0
                } else {
                    match op {
                        Compare::Less => x < threshold,
                        Compare::LessEq => x <= threshold,
                        Compare::Equal => x == threshold,
                    }
                }
            }
            Special::Categories { start, len } => {
                let bits = &self.bitsets[start as usize..(start + len) as usize];
                category_in(bits, x)
            }
        }
    }

    /// Applies the objective to margins: `(labels, columns)`, where `columns` are the
    /// probabilities (classifiers, `n_classes` per row) or predictions (1 per row).
    pub fn finish(&self, margins: &[f64]) -> (Option<Vec<i64>>, Vec<f32>) {
        match self.objective {
            Objective::BinaryLogistic { scale } => {
                let mut labels = Vec::with_capacity(margins.len());
                let mut probs = Vec::with_capacity(margins.len() * 2);
                for &m in margins {
                    let p = sigmoid(scale * m);
                    labels.push(i64::from(m > 0.0));
                    probs.extend([(1.0 - p) as f32, p as f32]);
                }
                (Some(labels), probs)
            }
            Objective::Softmax => {
                let mut labels = Vec::with_capacity(margins.len() / self.n_groups);
                let mut probs = Vec::with_capacity(margins.len());
                for row in margins.chunks_exact(self.n_groups) {
                    let (best, max) = row.iter().copied().enumerate().fold(
                        (0, f64::NEG_INFINITY),
                        |(bi, bm), (i, m)| {
                            if m > bm { (i, m) } else { (bi, bm) }
                        },
                    );
                    let sum: f64 = row.iter().map(|m| (m - max).exp()).sum();
                    labels.push(best as i64);
                    probs.extend(row.iter().map(|m| ((m - max).exp() / sum) as f32));
                }
                (Some(labels), probs)
            }
            Objective::Identity | Objective::Raw => {
                (None, margins.iter().map(|&m| m as f32).collect())
            }
            Objective::Logistic => (None, margins.iter().map(|&m| sigmoid(m) as f32).collect()),
            Objective::Exp => (None, margins.iter().map(|&m| m.exp() as f32).collect()),
        }
    }
}

/// `groups` entry of a tree whose leaves hold a value for every output.
const ALL_GROUPS: u32 = u32::MAX;

const SUM: u8 = 0;
const SUM32: u8 = 1;
const MIN: u8 = 2;
const MAX: u8 = 3;

#[inline(always)]
fn combine<const AGG: u8>(margin: &mut f64, leaf: f32) {
    let leaf = f64::from(leaf);
    match AGG {
        SUM => *margin += leaf,
        SUM32 => *margin = f64::from(*margin as f32 + leaf as f32),
        MIN => *margin = margin.min(leaf),
        _ => *margin = margin.max(leaf),
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// LightGBM's categorical rule: the category is `x` truncated toward zero; NaN and negative
/// categories are never in the set.
pub(crate) fn category_in(bits: &[u32], x: f32) -> bool {
    if x.is_nan() {
        return false;
    }
    let cat = x as i64; // truncates toward zero, saturates
    if cat < 0 {
        return false;
    }
    let word = (cat / 32) as usize;
    word < bits.len() && (bits[word] >> (cat % 32)) & 1 == 1
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The plain recursive evaluator the flattened scorer is checked against: the leaf `row`
    /// reaches.
    pub(crate) fn reference_leaf<'t>(tree: &'t RawTree, node: usize, row: &[f32]) -> &'t RawNode {
        match &tree.nodes[node] {
            leaf @ (RawNode::Leaf(_) | RawNode::Leaves(_)) => leaf,
            RawNode::Split {
                feature,
                test,
                default_left,
                zero_is_missing,
                left,
                right,
            } => {
                let x = row[*feature as usize];
                let go_left = match test {
                    Test::InSet(bits) => category_in(bits, x),
                    Test::Less(t) | Test::LessEq(t) | Test::Equal(t) => {
                        let missing = x.is_nan() || (*zero_is_missing && x.abs() <= ZERO_THRESHOLD);
                        if missing {
                            *default_left
                        } else {
                            match test {
                                Test::Less(_) => x < *t,
                                Test::LessEq(_) => x <= *t,
                                _ => x == *t,
                            }
                        }
                    }
                };
                reference_leaf(tree, if go_left { *left } else { *right }, row)
            }
        }
    }

    /// xorshift64*: deterministic, dependency-free randomness for the property test.
    pub(crate) struct Rng(u64);
    impl Rng {
        pub fn new(seed: u64) -> Rng {
            Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
        }
        pub fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        pub fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        pub fn unit(&mut self) -> f32 {
            (self.next() >> 40) as f32 / (1u64 << 24) as f32
        }
        pub fn chance(&mut self, p: f32) -> bool {
            self.unit() < p
        }
    }

    fn random_tree(rng: &mut Rng, n_features: u32, n_groups: usize, depth: u32) -> RawTree {
        // Nodes are created in a shuffled order (children before or after parents) so the
        // flattening cannot rely on the file's order.
        fn grow(
            rng: &mut Rng,
            nf: u32,
            depth: u32,
            vector: Option<usize>,
            nodes: &mut Vec<Option<RawNode>>,
        ) -> usize {
            let me = nodes.len();
            nodes.push(None);
            let node = if depth == 0 || rng.chance(0.2) {
                match vector {
                    Some(ng) => {
                        RawNode::Leaves((0..ng).map(|_| (rng.unit() - 0.5) * 4.0).collect())
                    }
                    None => RawNode::Leaf((rng.unit() - 0.5) * 4.0),
                }
            } else {
                // Thresholds on a coarse grid so rows hit them exactly now and then; infinite
                // ones for the `<=` that has no `<` form.
                let t = match rng.below(12) {
                    0 => f32::INFINITY,
                    1 => f32::NEG_INFINITY,
                    _ => (rng.below(9) as f32 - 4.0) * 0.5,
                };
                let test = match rng.below(20) {
                    0..3 => Test::InSet((0..1 + rng.below(3)).map(|_| rng.next() as u32).collect()),
                    3..6 => Test::LessEq(t),
                    6..8 => Test::Equal(t),
                    _ => Test::Less(t),
                };
                let default_left = rng.chance(0.5);
                let zero_is_missing = rng.chance(0.2);
                let feature = rng.below(u64::from(nf)) as u32;
                let (left, right) = if rng.chance(0.5) {
                    let l = grow(rng, nf, depth - 1, vector, nodes);
                    (l, grow(rng, nf, depth - 1, vector, nodes))
                } else {
                    let r = grow(rng, nf, depth - 1, vector, nodes);
                    (grow(rng, nf, depth - 1, vector, nodes), r)
                };
                RawNode::Split {
                    feature,
                    test,
                    default_left,
                    zero_is_missing,
                    left,
                    right,
                }
            };
            nodes[me] = Some(node);
            me
        }
        let mut nodes = Vec::new();
        let vector = (n_groups > 1 && rng.chance(0.3)).then_some(n_groups);
        grow(rng, n_features, depth, vector, &mut nodes);
        RawTree {
            nodes: nodes.into_iter().map(Option::unwrap).collect(),
            group: rng.below(n_groups as u64) as usize,
        }
    }

    fn random_value(rng: &mut Rng) -> f32 {
        match rng.below(11) {
            0 => f32::NAN,
            1 => 0.0,
            2 => -0.0,
            3 => 1e-36,
            4 => (rng.below(9) as f32 - 4.0) * 0.5,
            5 => rng.below(70) as f32,
            6 => -(rng.below(3) as f32) - 0.5,
            7 => f32::INFINITY,
            8 => f32::NEG_INFINITY,
            _ => (rng.unit() - 0.5) * 10.0,
        }
    }

    #[test]
    fn flattened_scoring_equals_the_recursive_reference() {
        let mut rng = Rng::new(7);
        for case in 0..200 {
            let nf = 1 + rng.below(6) as u32;
            let ng = if rng.chance(0.3) {
                2 + rng.below(3) as usize
            } else {
                1
            };
            let depth = rng.below(7) as u32;
            // Up to 2 x LANES trees, so rows alone walk whole groups of trees and a tail.
            let trees: Vec<RawTree> = (0..1 + rng.below(2 * LANES as u64 + 3))
                .map(|_| random_tree(&mut rng, nf, ng, depth))
                .collect();
            let base: Vec<f64> = (0..ng).map(|_| f64::from(rng.unit())).collect();
            let raw = RawEnsemble {
                n_features: nf as usize,
                n_groups: ng,
                base_margin: base.clone(),
                trees: trees.clone(),
                objective: if ng > 1 {
                    Objective::Softmax
                } else {
                    Objective::Identity
                },
                feature_names: None,
            };
            let mut ensemble = Ensemble::build(raw).expect("random trees are valid");
            let aggregate = match rng.below(5) {
                0 => Aggregate::Min,
                1 => Aggregate::Max,
                2 => Aggregate::Sum32,
                _ => Aggregate::Sum,
            };
            ensemble.set_aggregate(aggregate);
            // More rows than one block, and a ragged last block.
            let n_rows = 1 + rng.below(3 * ROW_BLOCK as u64) as usize;
            let rows: Vec<f32> = (0..n_rows * nf as usize)
                .map(|_| random_value(&mut rng))
                .collect();
            let margins = ensemble.margins(&rows);
            for (r, row) in rows.chunks(nf as usize).enumerate() {
                let mut expected = match aggregate {
                    Aggregate::Sum | Aggregate::Sum32 => base.clone(),
                    Aggregate::Min => vec![f64::INFINITY; ng],
                    Aggregate::Max => vec![f64::NEG_INFINITY; ng],
                };
                for tree in &trees {
                    let leaves: Vec<(usize, f64)> = match reference_leaf(tree, 0, row) {
                        RawNode::Leaf(v) => vec![(tree.group, f64::from(*v))],
                        RawNode::Leaves(v) => v.iter().map(|&x| f64::from(x)).enumerate().collect(),
                        RawNode::Split { .. } => unreachable!("the reference stops at leaves"),
                    };
                    for (group, leaf) in leaves {
                        let m = &mut expected[group];
                        *m = match aggregate {
                            Aggregate::Sum => *m + leaf,
                            Aggregate::Sum32 => f64::from(*m as f32 + leaf as f32),
                            Aggregate::Min => m.min(leaf),
                            Aggregate::Max => m.max(leaf),
                        };
                    }
                }
                if matches!(aggregate, Aggregate::Min | Aggregate::Max) {
                    for (m, b) in expected.iter_mut().zip(&base) {
                        *m += b;
                    }
                }
                let got = &margins[r * ng..(r + 1) * ng];
                assert_eq!(got, &expected[..], "case {case}, row {r}: {row:?}");
            }
        }
    }

    #[test]
    fn refuses_broken_trees() {
        let split = |left, right, feature| RawNode::Split {
            feature,
            test: Test::Less(0.0),
            default_left: true,
            zero_is_missing: false,
            left,
            right,
        };
        let build = |nodes: Vec<RawNode>| {
            Ensemble::build(RawEnsemble {
                n_features: 2,
                n_groups: 1,
                base_margin: vec![0.0],
                trees: vec![RawTree { nodes, group: 0 }],
                objective: Objective::Identity,
                feature_names: None,
            })
            .unwrap_err()
        };
        let cycle = build(vec![split(0, 1, 0), RawNode::Leaf(1.0)]);
        assert!(
            cycle.contains("tree 0") && cycle.contains("reached twice"),
            "{cycle}"
        );
        let out_of_range = build(vec![split(1, 5, 0), RawNode::Leaf(1.0), RawNode::Leaf(2.0)]);
        assert!(out_of_range.contains("out of range"), "{out_of_range}");
        let feature = build(vec![split(1, 2, 9), RawNode::Leaf(1.0), RawNode::Leaf(2.0)]);
        assert!(feature.contains("feature 9"), "{feature}");
        assert!(build(vec![]).contains("no nodes"));
        let mixed = build(vec![
            split(1, 2, 0),
            RawNode::Leaf(1.0),
            RawNode::Leaves(vec![2.0]),
        ]);
        assert!(mixed.contains("one value among"), "{mixed}");
        let wide = build(vec![RawNode::Leaves(vec![1.0, 2.0])]);
        assert!(wide.contains("2 values for 1 outputs"), "{wide}");
    }

    #[test]
    fn categories_truncate_toward_zero_and_refuse_nan_and_negatives() {
        let bits = [0b101, 1 << 1];
        assert!(category_in(&bits, 0.0));
        assert!(category_in(&bits, -0.5), "trunc(-0.5) is category 0");
        assert!(category_in(&bits, 2.9));
        assert!(category_in(&bits, 33.0));
        assert!(!category_in(&bits, 1.0));
        assert!(!category_in(&bits, -1.0));
        assert!(!category_in(&bits, f32::NAN));
        assert!(!category_in(&bits, 64.0));
        assert!(!category_in(&bits, f32::INFINITY));
    }
}
