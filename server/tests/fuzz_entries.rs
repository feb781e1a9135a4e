//! The fuzz targets' entry points over their seed corpus and hand-made hostile inputs: the
//! same code `cargo fuzz` drives (fuzz/), run in every `cargo test` so it cannot rot.

use ferry_server::fuzzing::{endpoint_request, grpc_request, oip_request};

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/seeds")
        .join(target);
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    out.sort();
    out
}

fn framed(header: &[u8], tail: &[u8], declared: u16) -> Vec<u8> {
    let mut v = vec![1u8];
    v.extend_from_slice(&declared.to_le_bytes());
    v.extend_from_slice(header);
    v.extend_from_slice(tail);
    v
}

#[test]
fn oip_seeds_and_mutations_never_panic() {
    let seeds = seeds("oip_request");
    assert!(seeds.len() >= 4);
    for seed in &seeds {
        oip_request(seed);
        // every truncation and a few byte flips of every seed
        for cut in 0..seed.len() {
            oip_request(&seed[..cut]);
        }
        for i in (0..seed.len()).step_by(3) {
            let mut m = seed.clone();
            m[i] ^= 0xff;
            oip_request(&m);
        }
    }
    let lying = br#"{"inputs":[{"name":"X","shape":[4611686018427387904,4],"datatype":"FP64","parameters":{"binary_data_size":8}}]}"#;
    oip_request(&framed(lying, &[0; 8], lying.len() as u16));
    let bytes = br#"{"inputs":[{"name":"b","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":8}}]}"#;
    oip_request(&framed(
        bytes,
        &[0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4],
        bytes.len() as u16,
    ));
    oip_request(&framed(bytes, &[], u16::MAX));
    let mut deep = vec![0u8];
    deep.extend(std::iter::repeat_n(b'[', 100_000));
    oip_request(&deep);
}

#[test]
fn endpoint_seeds_and_mutations_never_panic() {
    for seed in seeds("endpoint_request") {
        endpoint_request(&seed);
        for cut in 0..seed.len() {
            endpoint_request(&seed[..cut]);
        }
    }
    endpoint_request(b"");
    endpoint_request(&[0xff, 0xfe, 0x00]);
    endpoint_request(br#"{"instances": [1, "a", null, []]}"#);
    endpoint_request(&[b'['; 100_000]);
}

#[test]
fn grpc_seeds_and_mutations_never_panic() {
    use ferry_server::grpc::proto::{ModelInferRequest, model_infer_request::InferInputTensor};
    use prost::Message;
    let seeds = seeds("grpc_request");
    assert!(seeds.len() >= 4);
    for seed in &seeds {
        ModelInferRequest::decode(seed.as_slice()).expect("a seed is a valid message");
        grpc_request(seed);
        for cut in 0..seed.len() {
            grpc_request(&seed[..cut]);
        }
        for i in 0..seed.len() {
            let mut m = seed.clone();
            m[i] ^= 0xff;
            grpc_request(&m);
            m[i] = 0x7f;
            grpc_request(&m);
        }
    }
    // Shapes that claim more than they hold: huge rows of nothing, overflowing counts.
    for shape in [
        vec![i64::MAX, 0],
        vec![1 << 62, 4],
        vec![-1, 2],
        vec![],
        vec![0, 0, 0],
    ] {
        for datatype in ["FP32", "BYTES", "INT8", "BOOL"] {
            let request = ModelInferRequest {
                model_name: "endpoint/x".into(),
                inputs: vec![InferInputTensor {
                    name: "a".into(),
                    datatype: datatype.into(),
                    shape: shape.clone(),
                    ..Default::default()
                }],
                raw_input_contents: vec![vec![1, 0, 0, 0, 7]],
                ..Default::default()
            };
            grpc_request(&request.encode_to_vec());
        }
    }
}

#[cfg(feature = "trees")]
#[test]
fn tree_model_seeds_and_mutations_never_panic() {
    use ferry_server::fuzzing::tree_model;
    let seeds = seeds("tree_model");
    assert!(seeds.len() >= 3);
    for seed in &seeds {
        let (mode, file) = (seed[0], &seed[1..]);
        let format = if mode & 1 == 0 {
            ferry_runtimes::TreeFormat::Xgboost
        } else {
            ferry_runtimes::TreeFormat::Lightgbm
        };
        ferry_runtimes::trees::fuzz_model(file, format)
            .unwrap_or_else(|e| panic!("a seed must read: {e}"));
        for cut in 0..seed.len() {
            tree_model(&seed[..cut]);
        }
        for i in (0..seed.len()).step_by(3) {
            let mut m = seed.clone();
            m[i] ^= 0xff;
            tree_model(&m);
            m[i] = b'9';
            tree_model(&m);
        }
    }
    let mut deep = vec![0u8];
    deep.extend(std::iter::repeat_n(b'[', 100_000));
    tree_model(&deep);
    // A LightGBM child pointing back at the root, and huge claimed sizes.
    let cyclic = b"\x01tree\nnum_class=1\nnum_tree_per_iteration=1\nmax_feature_idx=0\nobjective=regression\n\nTree=0\nnum_leaves=3\nsplit_feature=0 0\nthreshold=0 0\ndecision_type=0 0\nleft_child=1 0\nright_child=-1 -2\nleaf_value=1 2 3\n\nend of trees\n";
    tree_model(cyclic);
    tree_model(b"\x01tree\nnum_class=1\nnum_tree_per_iteration=1\nmax_feature_idx=99999999999\nobjective=regression\n\nend of trees\n");
    tree_model(b"\x00[#L\x7f\xff\xff\xff\xff\xff\xff\xff");
}
