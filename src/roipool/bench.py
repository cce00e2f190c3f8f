"""``roipool bench``: time the ops on named workloads against every installed peer.

Peers are measured in the same process and interleaved with roipool (one run
of each per repeat), and medians are reported, because shared machines are
noisy and only ratios measured side by side mean much. Peers: ONNX Runtime
(``MaxRoiPool``, ``RoiAlign``; forward only) and torchvision's CPU ops
(forward, forward+backward) when importable.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    images: int
    channels: int
    height: int
    width: int
    image_h: int
    image_w: int
    boxes_per_image: int
    output_size: int
    spatial_scale: float
    sampling_ratio: int = 2
    aligned: bool = True
    # position-sensitive workloads (C = C_out * output_size**2) run only the ps_ ops, the others never
    position_sensitive: bool = False

    def make(self, seed: int = 0):
        """Feature map ``(N, C, H, W)`` float32 and boxes ``(K, 5)`` float32.

        Box sides are log-uniform between 16 px and the image side, placed
        uniformly inside the image.
        """
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((self.images, self.channels, self.height, self.width), dtype=np.float32)
        k = self.images * self.boxes_per_image
        w = np.exp(rng.uniform(np.log(16), np.log(self.image_w), k))
        h = np.exp(rng.uniform(np.log(16), np.log(self.image_h), k))
        x1 = rng.uniform(0, self.image_w - w)
        y1 = rng.uniform(0, self.image_h - h)
        batch = np.repeat(np.arange(self.images), self.boxes_per_image)
        rois = np.column_stack([batch, x1, y1, x1 + w, y1 + h]).astype(np.float32)
        return x, rois


WORKLOADS = {
    w.name: w
    for w in [
        Workload("vgg16", "600x800 image through VGG16 conv5_3, 2000 proposals", 1, 512, 38, 50, 600, 800, 2000, 7, 1 / 16),
        Workload("small-batch", "8 images of 256x256, stride 8, 256 proposals each", 8, 256, 32, 32, 256, 256, 256, 7, 1 / 8),
        Workload("tiny", "a smoke test: 2 images of 128x128, stride 8, 32 proposals each", 2, 16, 16, 16, 128, 128, 32, 7, 1 / 8),
        Workload(
            "rfcn", "R-FCN head: 600x800 image, stride 16, 7x7 bins x 21 classes, 2000 proposals",
            1, 7 * 7 * 21, 38, 50, 600, 800, 2000, 7, 1 / 16, position_sensitive=True,
        ),
    ]
}


@dataclass
class Candidate:
    """One implementation of one op and mode: ``run()`` is timed."""

    impl: str
    run: Callable[[], object]
    is_ours: bool = False


@dataclass
class Row:
    workload: str
    op: str
    mode: str
    impl: str
    median_ms: float
    times_ms: list = field(default_factory=list)
    speedup: float | None = None  # fastest peer's median / this median, on roipool's rows
    baseline: str | None = None  # which peer and mode the speed-up is against


def _ort_session(node_kwargs, op_type, inputs):
    import onnxruntime as ort
    from onnx import TensorProto, helper

    node = helper.make_node(op_type, [n for n, _ in inputs], ["Y"], **node_kwargs)
    graph = helper.make_graph(
        [node],
        "bench",
        [helper.make_tensor_value_info(n, t, None) for n, t in inputs],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 16)])
    model.ir_version = 8
    options = ort.SessionOptions()
    # ORT's idle pool threads spin by default and would steal the cores from
    # whatever runs next in the interleaved loop; its kernels keep their threads.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _optional(name):
    try:
        return __import__(name)
    except ImportError:
        return None


def candidates(workload: Workload, op: str, mode: str, device: str = "cpu") -> list[Candidate]:
    """Everything installed that can run ``op`` in ``mode`` ("forward" or "forward+backward")."""
    import roipool

    x, rois = workload.make()
    size, scale = workload.output_size, workload.spatial_scale
    extra = {} if op in ("roi_pool", "ps_roi_pool") else {"sampling_ratio": workload.sampling_ratio}
    if op == "roi_align":
        extra["aligned"] = workload.aligned
    out: list[Candidate] = []
    torch = _optional("torch")
    if op == "prroi_pool":
        return _prroi_candidates(workload, x, rois, mode, device, torch)

    if device == "cpu" and hasattr(roipool, op):
        fn = getattr(roipool, op)
        # The upstream gradient of a training step is made once, as for torch below.
        upstream = np.ones_like(fn(x, rois, size, scale, **extra)) if mode != "forward" else None
        if mode == "forward":
            out.append(Candidate("roipool (numpy)", lambda: fn(x, rois, size, scale, **extra), True))
        elif op == "roi_pool":
            def numpy_train_step():
                _, argmax = roipool.roi_pool_with_argmax(x, rois, size, scale)
                return roipool.roi_pool_backward(upstream, argmax, rois, x.shape)

            def numpy_recompute_step():
                roipool.roi_pool(x, rois, size, scale)
                return roipool.roi_pool_backward(upstream, None, rois, x.shape, input=x, spatial_scale=scale)

            out.append(Candidate("roipool (numpy)", numpy_train_step, True))
            out.append(Candidate("roipool (numpy, no argmax)", numpy_recompute_step, True))
        elif hasattr(roipool, f"{op}_backward"):
            backward = getattr(roipool, f"{op}_backward")

            def numpy_align_step():
                fn(x, rois, size, scale, **extra)
                return backward(upstream, rois, x.shape, size, scale, **extra)

            out.append(Candidate("roipool (numpy)", numpy_align_step, True))

    if torch is not None and (device == "cpu" or torch.cuda.is_available()):
        dev = torch.device(device)
        xt = torch.from_numpy(x).to(dev)
        rt = torch.from_numpy(rois).to(dev)
        if hasattr(roipool, op) and importlib.util.find_spec("roipool._torch_ops") is not None:
            fn = getattr(roipool, op)
            out.append(_torch_candidate("roipool (torch)", fn, xt, rt, size, scale, extra, mode, torch, True))
        if _optional("torchvision") is not None:
            import torchvision.ops

            out.append(
                _torch_candidate("torchvision", getattr(torchvision.ops, op), xt, rt, size, scale, extra, mode, torch)
            )

    if device == "cpu" and mode == "forward" and _optional("onnxruntime") is not None and _optional("onnx") is not None:
        from onnx import TensorProto

        if op == "roi_pool":
            sess = _ort_session(
                {"pooled_shape": [size, size], "spatial_scale": float(scale)},
                "MaxRoiPool",
                [("X", TensorProto.FLOAT), ("R", TensorProto.FLOAT)],
            )
            out.append(Candidate("onnxruntime", lambda: sess.run(None, {"X": x, "R": rois})))
        elif op == "roi_align":
            sess = _ort_session(
                {
                    "output_height": size,
                    "output_width": size,
                    "spatial_scale": float(scale),
                    "sampling_ratio": max(workload.sampling_ratio, 0),
                    "mode": "avg",
                    "coordinate_transformation_mode": "half_pixel" if workload.aligned else "output_half_pixel",
                },
                "RoiAlign",
                [("X", TensorProto.FLOAT), ("rois", TensorProto.FLOAT), ("batch_indices", TensorProto.INT64)],
            )
            feeds = {"X": x, "rois": np.ascontiguousarray(rois[:, 1:]), "batch_indices": rois[:, 0].astype(np.int64)}
            out.append(Candidate("onnxruntime", lambda: sess.run(None, feeds)))
    return out


def _prroi_candidates(workload, x, rois, mode, device, torch) -> list[Candidate]:
    """prroi_pool, measured beside roipool's own roi_align forward (the goal's yardstick;
    torchvision has no PrRoI). forward+backward includes both the input and the box gradient."""
    import roipool

    size, scale = workload.output_size, workload.spatial_scale
    if device != "cpu":
        return []
    if mode == "forward":
        return [
            Candidate("roipool (numpy)", lambda: roipool.prroi_pool(x, rois, size, scale), True),
            Candidate(
                f"roi_align s={workload.sampling_ratio} (numpy)",
                lambda: roipool.roi_align(x, rois, size, scale, workload.sampling_ratio, workload.aligned),
            ),
        ]
    upstream = np.ones_like(roipool.prroi_pool(x, rois, size, scale))

    def numpy_step():
        roipool.prroi_pool(x, rois, size, scale)
        return (
            roipool.prroi_pool_backward(upstream, rois, x.shape, size, scale),
            roipool.prroi_pool_boxes_backward(upstream, x, rois, size, scale),
        )

    out = [Candidate("roipool (numpy)", numpy_step, True)]
    if torch is not None:
        xg = torch.from_numpy(x).requires_grad_(True)
        rg = torch.from_numpy(rois).requires_grad_(True)
        ug = torch.from_numpy(upstream)
        out.append(
            Candidate(
                "roipool (torch)",
                lambda: torch.autograd.grad(roipool.prroi_pool(xg, rg, size, scale), (xg, rg), ug),
                True,
            )
        )
    return out


def _torch_candidate(impl, fn, xt, rt, size, scale, extra, mode, torch, is_ours=False):
    sync = torch.cuda.synchronize if xt.is_cuda else (lambda: None)
    if mode == "forward":
        def run():
            with torch.no_grad():
                y = fn(xt, rt, size, scale, **extra)
            sync()
            return y
    else:
        xg = xt.detach().clone().requires_grad_(True)
        # The upstream gradient is made once, outside the timed step: it is the
        # next layer's output, not part of this layer's work (200 MB on vgg16).
        with torch.no_grad():
            upstream = torch.ones_like(fn(xt, rt, size, scale, **extra))

        def run():
            y = fn(xg, rt, size, scale, **extra)
            (g,) = torch.autograd.grad(y, xg, upstream)
            sync()
            return g

    return Candidate(impl, run, is_ours)


def _touch(nbytes: int) -> None:
    """Write ``nbytes`` of fresh memory and free it."""
    if nbytes:
        np.ones(nbytes // 8, np.float64)


def measure(cands: list[Candidate], repeat: int, warmup: int = 1, touch_bytes: int = 0) -> dict[str, list[float]]:
    """Interleaved timings in ms: each repeat runs every candidate once.

    The order rotates from one repeat to the next, and before each timed call
    ``touch_bytes`` of memory are written and freed (untimed). On a VM that
    hands freed memory back to its host after a second or two (free page
    reporting, as on our development VM), the first large allocation after a
    long call pays the host's page faults again, up to 300 ms for 200 MB;
    in a training loop the op runs often enough that its memory stays with
    the guest. Touching first gives every candidate that steady state.
    """
    for c in cands:
        for _ in range(warmup):
            c.run()
    times: dict[str, list[float]] = {c.impl: [] for c in cands}
    for r in range(repeat):
        shift = r % len(cands)
        for c in cands[shift:] + cands[:shift]:
            _touch(touch_bytes)
            t0 = time.perf_counter()
            result = c.run()
            times[c.impl].append((time.perf_counter() - t0) * 1e3)
            del result
    return times


def machine() -> dict:
    import numba

    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "numba": numba.__version__,
        "numba_threads": numba.get_num_threads(),
    }
    try:
        info["numba_threading_layer"] = numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet
        pass
    for name in ("torch", "torchvision", "onnxruntime"):
        mod = _optional(name)
        if mod is not None:
            info[name] = mod.__version__
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


OPS = ("roi_pool", "roi_align", "ps_roi_pool", "ps_roi_align", "prroi_pool")
MODES = ("forward", "forward+backward")


def run(workloads, repeat: int, device: str = "cpu", ops=OPS) -> list[Row]:
    rows: list[Row] = []
    for wname in workloads:
        workload = WORKLOADS[wname]
        for op in ops:
            if op.startswith("ps_") != workload.position_sensitive:
                continue  # position-sensitive ops need C divisible by bins: workloads of their own
            forward_peers: list[Row] = []
            for mode in MODES:
                cands = candidates(workload, op, mode, device)
                if not any(c.is_ours for c in cands):
                    continue
                k, c = workload.images * workload.boxes_per_image, workload.channels
                output_bytes = k * c * workload.output_size**2 * 4
                times = measure(cands, repeat, touch_bytes=3 * output_bytes)
                block = [
                    Row(wname, op, mode, c.impl, statistics.median(times[c.impl]), [round(t, 3) for t in times[c.impl]])
                    for c in cands
                ]
                ours = {c.impl for c in cands if c.is_ours}
                peers = [r for r in block if r.impl not in ours]
                if mode == "forward":
                    forward_peers = peers
                elif not peers:
                    # ONNX Runtime has no backward: a training step is compared
                    # with the peer's forward alone, as the goals are stated.
                    peers = forward_peers
                if peers:
                    best = min(peers, key=lambda r: r.median_ms)
                    for r in block:
                        if r.impl in ours:
                            r.speedup = best.median_ms / r.median_ms
                            r.baseline = f"{best.impl} {best.mode}"
                rows.extend(block)
    return rows


def format_table(rows: list[Row]) -> str:
    head = f"{'workload':<12} {'op':<10} {'mode':<17} {'implementation':<26} {'median ms':>10}  speed-up"
    lines = [head]
    for r in rows:
        ratio = f"{r.speedup:.1f}x vs {r.baseline}" if r.speedup is not None else ""
        lines.append(f"{r.workload:<12} {r.op:<10} {r.mode:<17} {r.impl:<26} {r.median_ms:>10.2f}  {ratio}")
    return "\n".join(lines)


def main(args) -> int:
    names = args.workload or [n for n in WORKLOADS if n != "tiny"]
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        raise SystemExit(f"roipool bench: unknown workload {unknown[0]!r}; choose from {', '.join(WORKLOADS)}")
    if args.repeat < 1:
        raise SystemExit("roipool bench: --repeat must be at least 1")
    rows = run(names, args.repeat, args.device)
    if args.json:
        print(json.dumps({"machine": machine(), "results": [r.__dict__ for r in rows]}, indent=2))
    else:
        info = machine()
        print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))
        print(format_table(rows))
        print(f"(medians of {args.repeat} interleaved repeats; speed-up = the fastest peer's median / this median)")
    return 0
