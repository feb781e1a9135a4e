//! Every built-in step's column form against its row form, over random columns: the chain
//! either answers `NeedsRows` or rewrites the columns into what the rows become (numbers
//! compared by value: a column form writes float64 where the row form may keep an integer).

use arrow_array::builder::{FixedSizeListBuilder, Float32Builder};
use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use ferry_pipeline::arrow_rows::batch_to_rows;
use ferry_transforms::{
    Applied, BuildOptions, Chain, Context, Frame, FrameContext, Registry, Row, Stage, build_chain,
};
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;

fn chain(stage: Stage, steps: Value) -> Chain {
    build_chain(
        steps.as_array().unwrap(),
        &BuildOptions {
            stage,
            base_dir: Path::new("."),
            registry: &Registry::new(),
        },
    )
    .unwrap()
}

/// Numbers as f64, so `5` and `5.0` are one value; everything else as it is.
fn by_value(v: &Value) -> Value {
    match v {
        Value::Number(n) => json!(n.as_f64()),
        Value::Array(items) => Value::Array(items.iter().map(by_value).collect()),
        Value::Object(m) => {
            Value::Object(m.iter().map(|(k, v)| (k.clone(), by_value(v))).collect())
        }
        other => other.clone(),
    }
}

fn random_batch(rng: &mut fastrand::Rng, n: usize) -> RecordBatch {
    let amount: ArrayRef = if rng.bool() {
        Arc::new(Float64Array::from_iter(
            (0..n).map(|_| (rng.u8(..) > 30).then(|| rng.f64() * 3000.0 - 500.0)),
        ))
    } else {
        Arc::new(Int64Array::from_iter_values(
            (0..n).map(|_| rng.i64(-5..2000)),
        ))
    };
    let visits: ArrayRef = Arc::new(Float64Array::from_iter_values((0..n).map(|_| {
        if rng.u8(..) < 3 {
            -1.5
        } else {
            rng.f64() * 40.0
        }
    })));
    let mut probabilities = FixedSizeListBuilder::new(Float32Builder::new(), 2);
    for _ in 0..n {
        let p = rng.f32();
        probabilities.values().append_slice(&[1.0 - p, p]);
        probabilities.append(true);
    }
    let country: ArrayRef =
        Arc::new(StringArray::from_iter((0..n).map(|_| {
            (rng.u8(..) > 20).then(|| ["DE", "FR", "US"][rng.usize(..3)])
        })));
    RecordBatch::try_from_iter([
        ("amount", amount),
        ("visits", visits),
        (
            "probabilities",
            Arc::new(probabilities.finish()) as ArrayRef,
        ),
        ("country", country),
    ])
    .unwrap()
}

#[test]
fn column_forms_give_what_the_row_forms_give() {
    let pre = [
        json!([{"fill_missing": {"amount": 0, "country": "XX", "extra": 2.5}}]),
        json!([{"clip": {"amount": {"min": 0, "max": 1000}}}]),
        json!([{"standardize": {"amount": {"mean": 250, "std": 120}}}]),
        json!([{"scale": {"visits": {"factor": 2, "offset": 1}}}]),
        json!([{"min_max": {"visits": {"min": 0, "max": 40}}}]),
        json!([{"log1p": ["visits"]}]),
        json!([
            {"fill_missing": {"amount": 0}},
            {"clip": {"amount": {"min": 0, "max": 1000}}},
            {"standardize": {"amount": {"mean": 250, "std": 120}}},
            {"log1p": ["visits"]}
        ]),
    ];
    let post = [
        json!([{"threshold": {"field": "probabilities", "index": 1, "threshold": 0.5,
                               "labels": ["approve", "review"], "output": "decision"}}]),
        json!([{"threshold": {"field": "visits", "threshold": 10, "labels": [0, 1]}}]),
        json!([{"threshold": {"field": "visits", "threshold": 10, "labels": [true, false]}}]),
        json!([{"calibrate": {"field": "probabilities", "index": 1,
                               "table": [[0, 0], [0.5, 0.4], [1, 1]], "output": "score"}}]),
        json!([{"calibrate": {"field": "visits", "table": [[0, 0], [40, 1]]}}]),
        json!([{"cap": {"visits": 20}}, {"floor": {"visits": 1}}]),
        json!([{"rename": {"visits": "v", "country": "visits"}}]),
        json!([{"rename": {"visits": "v"}}, {"select": ["v", "probabilities"]}]),
        json!([{"select": ["missing"]}]),
    ];
    let mut rng = fastrand::Rng::with_seed(7);
    let mut columnar = 0;
    for round in 0..40 {
        let n = rng.usize(1..60);
        let batch = random_batch(&mut rng, n);
        let inputs = batch_to_rows(&batch).unwrap();
        let chains = pre
            .iter()
            .map(|s| chain(Stage::Pre, s.clone()))
            .chain(post.iter().map(|s| chain(Stage::Post, s.clone())));
        for (c, chain) in chains.enumerate() {
            assert!(chain.has_column_form());
            let mut frame = Frame::from_batch(&batch);
            let applied = chain
                .apply_frame(&mut frame, &FrameContext { inputs: None })
                .unwrap();
            let mut rows: Vec<Row> = inputs.clone();
            let by_rows = chain.apply(&mut rows, &Context::post(&inputs));
            if applied == Applied::NeedsRows {
                continue;
            }
            columnar += 1;
            if let Err(e) = by_rows {
                panic!("round {round}, chain {c}: the column form passed where the rows fail: {e}")
            }
            let by_columns = batch_to_rows(&frame.to_batch().unwrap()).unwrap();
            for (i, (r, f)) in rows.iter().zip(&by_columns).enumerate() {
                assert_eq!(
                    by_value(&Value::Object(f.clone())),
                    by_value(&Value::Object(r.clone())),
                    "round {round}, chain {c}, row {i}"
                );
            }
        }
    }
    // Most rounds must take the column form, or the comparison says little.
    assert!(columnar > 40 * 12, "{columnar}");
}
