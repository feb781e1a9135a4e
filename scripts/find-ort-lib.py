#!/usr/bin/env python3
"""Print the path of libonnxruntime.so shipped by the installed `onnxruntime` wheel."""
import glob
import os
import sys

try:
    import onnxruntime
except ImportError:
    sys.exit("the onnxruntime wheel is not installed: pip install onnxruntime==1.31.1")
capi = os.path.join(os.path.dirname(onnxruntime.__file__), "capi")
libs = sorted(glob.glob(os.path.join(capi, "libonnxruntime.so*")), key=len, reverse=True)
if not libs:
    sys.exit(f"no libonnxruntime.so* in {capi}")
print(libs[0])
