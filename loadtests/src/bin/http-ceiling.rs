//! The HTTP ceiling: a bare axum server that answers every POST with a fixed JSON body of the
//! size ferry's tree-model answer has. What no model server on this machine can beat.
//!
//! Usage: http-ceiling --listen 127.0.0.1:PORT

use axum::Router;
use axum::routing::{get, post};

const BODY: &str = r#"{"model_name":"churn","model_version":"1","outputs":[{"name":"label","datatype":"INT64","shape":[1],"data":[1]},{"name":"probabilities","datatype":"FP32","shape":[1,2],"data":[0.3061,0.6939]}]}"#;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let listen = ferry_loadtests::arg("--listen").unwrap_or_else(|| "127.0.0.1:8090".into());
    let app = Router::new()
        .route("/v2/health/ready", get(|| async { "{\"ready\":true}" }))
        .route(
            "/{*path}",
            post(|_body: axum::body::Bytes| async {
                ([("content-type", "application/json")], BODY)
            }),
        );
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
