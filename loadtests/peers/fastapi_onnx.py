#!/usr/bin/env python3
"""Peer server for side-by-side load tests: FastAPI + uvicorn + onnxruntime serving the same
ONNX model over the same Open Inference Protocol v2 JSON route as ferry.

Usage: python3 fastapi_onnx.py MODEL.onnx PORT [WORKERS]
"""
import os
import sys
from contextlib import asynccontextmanager

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

MODEL = os.environ.get("PEER_MODEL") or (sys.argv[1] if len(sys.argv) > 1 else "")
session = None
DTYPES = {"FP32": np.float32, "FP64": np.float64, "INT32": np.int32, "INT64": np.int64, "BOOL": np.bool_}
NAMES = {v: k for k, v in DTYPES.items()}


@asynccontextmanager
async def lifespan(_app):
    global session
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    # Each worker process builds its own session (sessions do not survive fork).
    session = ort.InferenceSession(MODEL, opts, providers=["CPUExecutionProvider"])
    yield


app = FastAPI(lifespan=lifespan)


@app.get("/v2/health/ready")
def ready():
    return {"ready": session is not None}


@app.post("/v2/models/{model}/infer")
async def infer(model: str, request: Request):
    body = await request.json()
    feeds = {i["name"]: np.asarray(i["data"], dtype=DTYPES[i["datatype"]]).reshape(i["shape"])
             for i in body["inputs"]}
    names = [o.name for o in session.get_outputs()]
    outs = session.run(names, feeds)
    return JSONResponse({"model_name": model, "outputs": [
        {"name": n, "datatype": NAMES.get(o.dtype.type, "FP32"), "shape": list(o.shape),
         "data": o.reshape(-1).tolist()} for n, o in zip(names, outs)]})


if __name__ == "__main__":
    import uvicorn
    os.environ["PEER_MODEL"] = MODEL
    workers = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    uvicorn.run("fastapi_onnx:app", host="127.0.0.1", port=int(sys.argv[2]), workers=workers,
                log_level="warning", access_log=False, app_dir=os.path.dirname(os.path.abspath(__file__)))
