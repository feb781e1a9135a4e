//! gRPC load generator: unary `inference.GRPCInferenceService/ModelInfer` calls with one
//! random FP32 input (raw contents, as `tritonclient.grpc` sends them) at a fixed concurrency
//! over HTTP/2 without TLS, for a fixed time. Streams share connections (16 per connection,
//! as gRPC clients multiplex). Prints one machine-readable line:
//!
//! `RESULT requests=N seconds=S p50_us=P p99_us=Q errors=E`
//!
//! Usage: grpc-load --addr 127.0.0.1:8081 --model churn --input X --shape 1,30
//!                  [--concurrency 64] [--seconds 10]

use anyhow::{Context, bail};
use bytes::Bytes;
use ferry_loadtests::arg;
use ferry_server::grpc::proto::{ModelInferRequest, model_infer_request::InferInputTensor};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use std::time::{Duration, Instant};

const STREAMS_PER_CONNECTION: usize = 16;

fn request_body(model: &str, input: &str, shape: &[i64]) -> Bytes {
    let count: i64 = shape.iter().product();
    // A fixed pseudo-random row: the same work for every call.
    let mut x = 0x2545_f491_u32;
    let raw: Vec<u8> = (0..count)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            ((x % 4000) as f32 / 1000.0 - 2.0).to_le_bytes()
        })
        .collect();
    let message = ModelInferRequest {
        model_name: model.into(),
        inputs: vec![InferInputTensor {
            name: input.into(),
            datatype: "FP32".into(),
            shape: shape.to_vec(),
            ..Default::default()
        }],
        raw_input_contents: vec![raw],
        ..Default::default()
    }
    .encode_to_vec();
    // gRPC framing: uncompressed flag, then the big-endian length.
    let mut framed = Vec::with_capacity(5 + message.len());
    framed.push(0);
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&message);
    Bytes::from(framed)
}

async fn connect(
    addr: &str,
) -> anyhow::Result<hyper::client::conn::http2::SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .context("HTTP/2 handshake")?;
    tokio::spawn(conn);
    Ok(send)
}

/// One call; Ok(true) when it answered grpc-status 0.
async fn call(
    send: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    uri: &str,
    body: &Bytes,
) -> anyhow::Result<bool> {
    let request = hyper::Request::post(uri)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(body.clone()))?;
    send.ready().await?;
    let response = send.send_request(request).await?;
    let ok_status = response.status() == hyper::StatusCode::OK;
    let header_status = response.headers().get("grpc-status").cloned();
    let collected = response.into_body().collect().await?;
    let status = header_status.or_else(|| {
        collected
            .trailers()
            .and_then(|t| t.get("grpc-status").cloned())
    });
    Ok(ok_status && status.is_some_and(|s| s == "0"))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let addr = arg("--addr").unwrap_or_else(|| "127.0.0.1:8081".into());
    let model = arg("--model").context("--model NAME")?;
    let input = arg("--input").unwrap_or_else(|| "X".into());
    let shape: Vec<i64> = arg("--shape")
        .unwrap_or_else(|| "1,30".into())
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .context("--shape like 1,30")?;
    let concurrency: usize = arg("--concurrency")
        .unwrap_or_else(|| "64".into())
        .parse()?;
    let seconds: f64 = arg("--seconds").unwrap_or_else(|| "10".into()).parse()?;
    if concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    let body = request_body(&model, &input, &shape);
    let uri = format!("http://{addr}/inference.GRPCInferenceService/ModelInfer");
    let connections = concurrency.div_ceil(STREAMS_PER_CONNECTION);
    let mut senders = Vec::with_capacity(connections);
    for _ in 0..connections {
        senders.push(connect(&addr).await?);
    }
    // Warm-up: one call per connection.
    for s in &mut senders {
        if !call(s, &uri, &body).await? {
            bail!("the warm-up call did not answer grpc-status 0; is {model} served at {addr}?");
        }
    }
    let started = Instant::now();
    let end = started + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::with_capacity(concurrency);
    for i in 0..concurrency {
        let mut send = senders[i % connections].clone();
        let (uri, body) = (uri.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            while Instant::now() < end {
                let t = Instant::now();
                match call(&mut send, &uri, &body).await {
                    Ok(true) => latencies.push(t.elapsed().as_micros() as u64),
                    _ => errors += 1,
                }
            }
            (latencies, errors)
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await?;
        latencies.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "RESULT requests={} seconds={elapsed:.3} p50_us={} p99_us={} errors={errors}",
        latencies.len(),
        pct(0.50),
        pct(0.99)
    );
    Ok(())
}
