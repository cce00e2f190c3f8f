"""Compile every Triton kernel for a real GPU target without a GPU (run as a script).

The interpreter runs the kernels' Python, so it misses what only the compiler
checks (types, constexpr rules, lowering). This script compiles each kernel
for NVIDIA sm_90 through PTX with ptxas (shipped with triton), for each data
type, and checks the PTX for the exact-arithmetic promises: float32
division is ``div.rn`` (never the approximate ``div.full``) and no fused
multiply-add appears. It must run without ``TRITON_INTERPRET``.
Usage: ``python tests/triton_compile_check.py [--ptx-dir DIR]`` (prints one line per kernel;
with ``--ptx-dir``, also writes each kernel's PTX there, a file per line printed, so that two
trees' compiled code can be compared with ``diff -r``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

assert os.environ.get("TRITON_INTERPRET", "0") in ("", "0"), "run without TRITON_INTERPRET"

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402

from roipool.triton import prroi_pool, ps_roi, roi_align, roi_pool  # noqa: E402

# pointer arguments by role: data (the op's dtype), compute (float32/float64), int32
DATA = {"input_ptr", "output_ptr", "grad_ptr", "grad_input_ptr"}
COMPUTE = {"rois_ptr", "scale_ptr", "grad_rois_ptr"}

POOL = {"POOLED_H": 7, "POOLED_W": 7}
SPANS = {"BLOCK_PH": 8, "BLOCK_PW": 8}
TILE = {"TILE_H": 8, "TILE_W": 8}
KERNELS = [
    (roi_pool._roi_pool_forward_kernel, {**POOL, "BLOCK_C": 32, "BLOCK_P": 64, "WITH_ARGMAX": True}),
    (roi_pool._argmax_spans_kernel, {**POOL, "BLOCK_C": 32, "BLOCK_P": 64}),
    (roi_pool._roi_pool_backward_kernel, {**POOL, **SPANS, "BLOCK_C": 32, **TILE, "ACC_DTYPE": None}),
    (roi_pool._roi_pool_backward_lists_kernel, {"BINS": 49, "BLOCK_C": 4, **TILE, "ACC_DTYPE": None}),
    (roi_align._roi_align_forward_kernel, {"ALIGNED": True, **POOL, "BLOCK_C": 32, "BLOCK_P": 64}),
    (roi_align._roi_align_spans_kernel, {"ALIGNED": False, **POOL, "BLOCK_PH": 8, "BLOCK_PW": 8}),
    (roi_align._roi_align_backward_kernel, {"ALIGNED": True, **POOL, **SPANS, "BLOCK_C": 32, **TILE}),
    (roi_align._roi_align_backward_lists_kernel, {"ALIGNED": True, **POOL, "BLOCK_C": 4, **TILE}),
    (roi_align._roi_align_boxes_kernel, {"ALIGNED": False, **POOL, "BLOCK_C": 32, "BLOCK_P": 64}),
    (ps_roi._ps_forward_kernel, {"ALIGN": True, **POOL, "BLOCK_C": 32, "BLOCK_P": 64}),
    (ps_roi._ps_forward_kernel, {"ALIGN": False, **POOL, "BLOCK_C": 32, "BLOCK_P": 64}),
    (ps_roi._ps_spans_kernel, {"ALIGN": True, **POOL, "BLOCK_PH": 8, "BLOCK_PW": 8}),
    (ps_roi._ps_spans_kernel, {"ALIGN": False, **POOL, "BLOCK_PH": 8, "BLOCK_PW": 8}),
    (ps_roi._ps_backward_kernel, {"ALIGN": True, **POOL, "BLOCK_C": 32, "TILE_H": 8, "TILE_W": 8}),
    (ps_roi._ps_backward_kernel, {"ALIGN": False, **POOL, "BLOCK_C": 32, "TILE_H": 8, "TILE_W": 8}),
    (ps_roi._ps_align_boxes_kernel, {**POOL, "BLOCK_C": 32, "BLOCK_P": 64}),
    (prroi_pool._forward_kernel, {**POOL, "BLOCK_C": 32, "BLOCK_P": 64}),
    (prroi_pool._backward_kernel, {**POOL, "BLOCK_C": 32, "TILE_H": 8, "TILE_W": 8}),
    (prroi_pool._boxes_backward_kernel, {**POOL, "BLOCK_C": 32, "BLOCK_P": 64}),
]
DTYPES = {"fp32": "fp32", "fp64": "fp64", "fp16": "fp32", "bf16": "fp32"}  # data -> compute


def compile_kernel(kernel, constexprs, data, compute, ints_are_one=False):
    """Compile for sm_90. ``ints_are_one``: every int argument 1, which Triton's
    launcher turns into a compile-time constant (as it does whenever an int is 1)."""
    signature = {}
    constexprs = dict(constexprs)
    for param in kernel.params:
        name = param.name
        if ints_are_one and not param.is_constexpr and not name.endswith("_ptr"):
            signature[name] = "constexpr"
            constexprs[name] = 1
        elif param.is_constexpr:
            signature[name] = "constexpr"
        elif name in DATA:
            signature[name] = f"*{data}"
        elif name in COMPUTE:
            signature[name] = f"*{compute}"
        elif name.endswith("_ptr"):
            signature[name] = "*i32"
        else:
            signature[name] = "i32"
    if "ACC_DTYPE" in constexprs:
        constexprs["ACC_DTYPE"] = tl.float64 if compute == "fp64" else tl.float32
    source = triton.compiler.ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"enable_fp_fusion": False})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ptx-dir", type=Path, help="also write each kernel's PTX to this folder")
    ptx_dir = parser.parse_args(argv).ptx_dir
    if ptx_dir is not None:
        ptx_dir.mkdir(parents=True, exist_ok=True)
    failures = 0
    variants = [(data, compute, False) for data, compute in DTYPES.items()] + [("fp32", "fp32", True)]
    for kernel, constexprs in KERNELS:
        for data, compute, ints_are_one in variants:
            ptx = compile_kernel(kernel, constexprs, data, compute, ints_are_one).asm["ptx"]
            problems = [word for word in ("div.full", "div.approx", "fma.") if word in ptx]
            failures += bool(problems)
            flag = constexprs.get("ALIGN", constexprs.get("ALIGNED", ""))
            ints = " ints=1" if ints_are_one else ""
            print(f"{kernel.__name__} {flag} {data}{ints}: {'FAIL ' + ', '.join(problems) if problems else 'ok'}")
            if ptx_dir is not None:
                name = f"{kernel.__name__}-{flag}-{data}{'-ints1' if ints_are_one else ''}.ptx"
                (ptx_dir / name).write_text(ptx)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
