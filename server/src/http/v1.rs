//! `POST /v1/models/{model}:predict` in TF-Serving's row format: `{"instances": [...]}` →
//! `{"predictions": [...]}`. Only the request body lives here; rows become tensors (and
//! outputs predictions) in `ferry_pipeline::rows`, which the endpoint pipeline shares.

use crate::http::error::ApiError;
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Deserialize)]
pub struct PredictRequest {
    pub instances: Vec<Value>,
    #[serde(default)]
    pub signature_name: Option<String>,
}

pub fn parse_request(body: &[u8]) -> Result<PredictRequest, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::BadRequest(format!(
            "the request is not a valid predict request: {e}; expected {{\"instances\": [row, row, ...]}}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_without_instances_is_a_bad_request() {
        let err = parse_request(br#"{"inputs": [[1, 2]]}"#).unwrap_err();
        assert!(matches!(err, ApiError::BadRequest(_)), "{err}");
        assert!(err.to_string().contains("expected {\"instances\""), "{err}");
        let ok = parse_request(br#"{"instances": [[1, 2]], "signature_name": "s"}"#).unwrap();
        assert_eq!(ok.instances.len(), 1);
    }
}
