//! Engine-alone scoring rate of a tree model: the `trees` engine on the library's own file
//! against ONNX Runtime on the same model converted to ONNX, on the same rows, in one process;
//! with the `tract` feature also the `trees` engine on that ONNX file (`engine=trees_onnx`).
//! Driven by `loadtests/trees_bench.py`, which trains and converts the models.
//!
//! Usage: tree_rate --trees FILE --format xgboost|lightgbm --onnx FILE --ort-lib PATH
//!                  --input NAME --outputs a,b [--rows 65536] [--seconds 3] [--threads 1,2]
//!                  [--engines trees,ort,trees_onnx] [--write-rows FILE]
//! Prints one `RESULT engine=… threads=… rows_per_s=…` line per engine and thread count.

use ferry_runtimes::{
    DataType, LoadOptions, OnnxEngine, Signature, Tensor, TensorData, TensorSpec, TreeFormat,
    inspect_tree_model, load_onnx, load_trees,
};
use std::path::Path;
use std::time::{Duration, Instant};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn need(name: &str) -> String {
    arg(name).unwrap_or_else(|| panic!("{name} is required (see the usage in tree_rate.rs)"))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let trees_path = need("--trees");
    let format = match need("--format").as_str() {
        "xgboost" => TreeFormat::Xgboost,
        "lightgbm" => TreeFormat::Lightgbm,
        other => return Err(format!("--format xgboost|lightgbm, got {other}").into()),
    };
    let rows: usize = arg("--rows").unwrap_or_else(|| "65536".into()).parse()?;
    let seconds: f64 = arg("--seconds").unwrap_or_else(|| "3".into()).parse()?;
    let threads: Vec<usize> = arg("--threads")
        .unwrap_or_else(|| "1,2".into())
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    ferry_runtimes::ort::init(Path::new(&need("--ort-lib")))?;

    let info = inspect_tree_model(Path::new(&trees_path), format)?;
    let nf = info.n_features;
    let tree_signature = info.default_signature();
    let onnx_signature = Signature {
        inputs: vec![TensorSpec {
            name: need("--input"),
            datatype: DataType::Fp32,
            shape: vec![-1, nf as i64],
        }],
        outputs: need("--outputs")
            .split(',')
            .map(|name| {
                tree_signature
                    .output(name)
                    .cloned()
                    .ok_or_else(|| format!("--outputs: the tree model has no output `{name}`"))
            })
            .collect::<Result<_, _>>()?,
    };
    let tree_signature = Signature {
        outputs: onnx_signature.outputs.clone(),
        ..tree_signature
    };
    // The same rows for both engines: a fixed pseudo-random stream with ~10% NaN.
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let data: Vec<f32> = (0..rows * nf)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let u = (state >> 40) as f32 / (1u64 << 24) as f32;
            if u < 0.1 { f32::NAN } else { (u - 0.55) * 6.0 }
        })
        .collect();
    // For peers outside this process (lleaves): the same rows, little-endian f32, row-major.
    if let Some(path) = arg("--write-rows") {
        let bytes: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
        std::fs::write(&path, bytes)?;
    }
    for &t in &threads {
        let options = LoadOptions {
            onnx_engine: OnnxEngine::Ort,
            intra_op_threads: t,
            ..LoadOptions::default()
        };
        let mut engines = vec![
            (
                "trees",
                load_trees(Path::new(&trees_path), format, &tree_signature, &options)?,
                tree_signature.inputs[0].name.clone(),
            ),
            (
                "ort",
                load_onnx(Path::new(&need("--onnx")), &onnx_signature, &options)?,
                onnx_signature.inputs[0].name.clone(),
            ),
        ];
        let on_trees = LoadOptions {
            onnx_engine: OnnxEngine::Trees,
            ..options.clone()
        };
        match load_onnx(Path::new(&need("--onnx")), &onnx_signature, &on_trees) {
            Ok(runtime) => {
                engines.push(("trees_onnx", runtime, onnx_signature.inputs[0].name.clone()))
            }
            Err(e) => eprintln!("trees_onnx skipped: {e}"),
        }
        let wanted = arg("--engines");
        for (name, runtime, input) in engines {
            if wanted
                .as_ref()
                .is_some_and(|w| !w.split(',').any(|e| e == name))
            {
                continue;
            }
            let inputs = [Tensor::new(
                input,
                vec![rows, nf],
                TensorData::Fp32(data.clone()),
            )?];
            runtime.run(&inputs)?;
            let started = Instant::now();
            let mut calls = 0u64;
            while started.elapsed() < Duration::from_secs_f64(seconds) || calls < 3 {
                runtime.run(&inputs)?;
                calls += 1;
            }
            let elapsed = started.elapsed().as_secs_f64();
            println!(
                "RESULT engine={name} threads={t} calls={calls} seconds={elapsed:.3} rows_per_s={:.0}",
                (calls as f64 * rows as f64) / elapsed
            );
        }
    }
    Ok(())
}
