//! The compute ceiling: one model version run in-process on one thread, no HTTP, no queue.
//!
//! Usage: engine-rate --registry DIR --model NAME [--version 1] --engine ort|tract
//!                    [--ort-lib PATH] [--rows 1] [--seconds 5]
//! Prints `RESULT calls=… seconds=… p50_us=… p99_us=…`.

use anyhow::{Context, bail};
use ferry_loadtests::arg;
use ferry_registry::{Registry, RegistryOptions};
use ferry_runtimes::{DataType, LoadOptions, OnnxEngine, Tensor, TensorData, load_onnx};
use std::time::{Duration, Instant};

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let registry = rt.block_on(Registry::open(&RegistryOptions::new(
        arg("--registry").context("--registry DIR")?,
    )))?;
    let model = arg("--model").context("--model NAME")?;
    let version: u64 = arg("--version").unwrap_or_else(|| "1".into()).parse()?;
    let rows: usize = arg("--rows").unwrap_or_else(|| "1".into()).parse()?;
    let seconds: f64 = arg("--seconds").unwrap_or_else(|| "5".into()).parse()?;
    let engine = match arg("--engine").as_deref() {
        Some("ort") => {
            ferry_runtimes::ort::init(arg("--ort-lib").context("--ort-lib PATH")?.as_ref())?;
            OnnxEngine::Ort
        }
        Some("tract") => OnnxEngine::Tract,
        other => bail!("--engine ort|tract, got {other:?}"),
    };
    let verified = rt.block_on(registry.fetch(&model, version))?;
    let options = LoadOptions {
        onnx_engine: engine,
        ..LoadOptions::default()
    };
    let runtime = load_onnx(
        &verified.artifact_path(),
        &verified.manifest.signature(),
        &options,
    )?;
    let inputs: Vec<Tensor> = runtime
        .signature()
        .inputs
        .iter()
        .map(|spec| {
            let shape: Vec<usize> = spec
                .shape
                .iter()
                .enumerate()
                .map(|(i, &d)| {
                    if d < 0 {
                        if i == 0 { rows } else { 1 }
                    } else {
                        d as usize
                    }
                })
                .collect();
            let n: usize = shape.iter().product();
            let data = match spec.datatype {
                DataType::Fp32 => TensorData::Fp32(
                    (0..n)
                        .map(|k| ((k * 37) % 101) as f32 / 50.0 - 1.0)
                        .collect(),
                ),
                DataType::Fp64 => TensorData::Fp64(
                    (0..n)
                        .map(|k| ((k * 37) % 101) as f64 / 50.0 - 1.0)
                        .collect(),
                ),
                DataType::Int64 => TensorData::Int64((0..n as i64).collect()),
                other => {
                    return Err(anyhow::anyhow!(
                        "datatype {other} not handled by engine-rate"
                    ));
                }
            };
            Ok(Tensor::new(spec.name.clone(), shape, data)?)
        })
        .collect::<anyhow::Result<_>>()?;
    for _ in 0..100 {
        runtime.run(&inputs)?;
    }
    let mut latencies = Vec::new();
    let started = Instant::now();
    let budget = Duration::from_secs_f64(seconds);
    while started.elapsed() < budget {
        let t = Instant::now();
        runtime.run(&inputs)?;
        latencies.push(t.elapsed());
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let pct = |p: f64| {
        latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)].as_micros()
    };
    println!(
        "RESULT calls={} seconds={elapsed:.3} p50_us={} p99_us={}",
        latencies.len(),
        pct(0.50),
        pct(0.99)
    );
    Ok(())
}
