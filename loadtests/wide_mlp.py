#!/usr/bin/env python3
"""Writes the wide MLP the batching and overload benchmarks use: 512 -> 2048 -> 2048 -> 1, FP32,
ReLU, random weights (seed 7), an ONNX file in DIR/wide/ (push it with `ferry models push`)
and a 1-row OIP v2 JSON body in DIR/wide.json. One 1-row call reads ~20 MB of weights (~1 ms
on this machine's cores), so the engine dominates and batching pays.

Usage: python3 loadtests/wide_mlp.py DIR
"""
import json
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def write(work):
    rng = np.random.default_rng(7)
    dims = [512, 2048, 2048, 1]
    inits, nodes, prev = [], [], "X"
    for i, (a, b) in enumerate(zip(dims, dims[1:])):
        inits.append(numpy_helper.from_array(
            (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32), f"W{i}"))
        last = i == len(dims) - 2
        nodes.append(helper.make_node("MatMul", [prev, f"W{i}"], ["Y" if last else f"m{i}"]))
        if not last:
            nodes.append(helper.make_node("Relu", [f"m{i}"], [f"h{i}"]))
            prev = f"h{i}"
    graph = helper.make_graph(
        nodes, "wide_mlp",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 512])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", 1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    os.makedirs(os.path.join(work, "wide"), exist_ok=True)
    onnx.save(model, os.path.join(work, "wide", "model.onnx"))
    with open(os.path.join(work, "wide.json"), "w") as f:
        json.dump({"inputs": [{"name": "X", "shape": [1, 512], "datatype": "FP32",
                               "data": [round(float(v), 4) for v in rng.uniform(-1, 1, 512)]}]}, f)


if __name__ == "__main__":
    write(sys.argv[1])
