#!/usr/bin/env python3
"""Writes an MLServer repository for one ONNX model.

Usage: configure.py OUT_DIR MODEL_NAME MODEL.onnx HTTP_PORT GRPC_PORT METRICS_PORT PARALLEL_WORKERS
"""
import json
import os
import shutil
import sys

out, name, model, http_port, grpc_port, metrics_port, workers = sys.argv[1:8]
os.makedirs(os.path.join(out, name), exist_ok=True)
shutil.copy(os.path.join(os.path.dirname(os.path.abspath(__file__)), "onnx_runtime.py"), out)
with open(os.path.join(out, "settings.json"), "w") as f:
    json.dump({"debug": False, "host": "127.0.0.1", "http_port": int(http_port),
               "grpc_port": int(grpc_port), "metrics_port": int(metrics_port),
               "parallel_workers": int(workers)}, f)
with open(os.path.join(out, name, "model-settings.json"), "w") as f:
    json.dump({"name": name, "implementation": "onnx_runtime.OnnxModel",
               "parameters": {"uri": os.path.abspath(model)}}, f)
