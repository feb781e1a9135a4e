//! Entry points for the fuzz targets in `fuzz/` (a separate crate built with `cargo fuzz`):
//! they drive the request decoders with arbitrary bytes. Every input must give `Ok` or an
//! `ApiError` with a 4xx status; a panic, an abort or a 5xx is a bug.

use crate::http::{endpoints, oip};

fn check(result: Result<(), crate::http::error::ApiError>) {
    if let Err(e) = result {
        assert!(
            e.status().is_client_error(),
            "a decoder returned {} for client input: {e}",
            e.status()
        );
    }
}

/// The Open Inference Protocol body decoder, JSON and binary tensors. The first byte chooses
/// whether an `Inference-Header-Content-Length` is sent and the next two bytes give it, so
/// the fuzzer reaches both framings and lying lengths.
pub fn oip_request(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (header, body) = if mode & 1 == 1 && rest.len() >= 2 {
        let n = u16::from_le_bytes([rest[0], rest[1]]);
        let text = if mode & 2 == 2 {
            format!(" {n} ")
        } else {
            n.to_string()
        };
        (Some(text), &rest[2..])
    } else {
        (None, rest)
    };
    check((|| {
        let (json, binary) = oip::split_body(body, header.as_deref())?;
        let request = oip::parse_request(json)?;
        let tensors = oip::decode_inputs(&request, binary)?;
        let names: Vec<String> = tensors.iter().map(|t| t.name.clone()).collect();
        let selected = oip::select_outputs(&request, &names)?;
        // Echo the inputs back as outputs: the encoder must take anything the decoder made.
        let encoded = oip::encode_response("fuzz", 1, request.id.as_deref(), &tensors, &selected);
        if let Some(n) = encoded.json_length {
            assert!(n <= encoded.body.len(), "JSON length beyond the body");
        }
        Ok(())
    })());
}

/// The business endpoint request decoder (`POST /v1/endpoints/{endpoint}/predict`).
pub fn endpoint_request(data: &[u8]) {
    check(endpoints::decode_request(data).map(|_| ()));
}

/// The gRPC `ModelInferRequest` decoder: the bytes are the protobuf message as a client would
/// send it. Tensors are decoded for a model (typed contents or raw contents), echoed back as
/// outputs, and read as business endpoint rows.
pub fn grpc_request(data: &[u8]) {
    use prost::Message;
    let Ok(request) = crate::grpc::proto::ModelInferRequest::decode(data) else {
        return;
    };
    check((|| {
        let tensors = crate::grpc::codec::decode_inputs(&request)?;
        let names: Vec<String> = tensors.iter().map(|t| t.name.clone()).collect();
        if let Ok(selected) = crate::grpc::codec::select_outputs(&request, &names) {
            let response =
                crate::grpc::codec::encode_response("fuzz", 1, &request, &tensors, &selected);
            assert_eq!(response.outputs.len(), selected.len());
        }
        crate::grpc::codec::endpoint_rows(&request).map(|_| ())
    })());
}

/// The tree model readers of the `trees` engine: the first byte picks the format (even:
/// XGBoost JSON/UBJSON, odd: LightGBM text), the rest is the file. A model that reads is also
/// scored on a row of NaN and a row of zeros.
#[cfg(feature = "trees")]
pub fn tree_model(data: &[u8]) {
    let Some((&mode, file)) = data.split_first() else {
        return;
    };
    let format = if mode & 1 == 0 {
        ferry_runtimes::TreeFormat::Xgboost
    } else {
        ferry_runtimes::TreeFormat::Lightgbm
    };
    let _ = ferry_runtimes::trees::fuzz_model(file, format);
}
