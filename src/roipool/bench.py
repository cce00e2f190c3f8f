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
        Workload(
            "vgg16", "600x800 image through VGG16 conv5_3, 2000 proposals", 1, 512, 38, 50, 600, 800, 2000, 7, 1 / 16
        ),
        Workload(
            "small-batch", "8 images of 256x256, stride 8, 256 proposals each", 8, 256, 32, 32, 256, 256, 256, 7, 1 / 8
        ),
        Workload(
            "tiny",
            "a smoke test: 2 images of 128x128, stride 8, 32 proposals each",
            2,
            16,
            16,
            16,
            128,
            128,
            32,
            7,
            1 / 8,
        ),
        Workload(
            "rfcn",
            "R-FCN head: 600x800 image, stride 16, 7x7 bins x 21 classes, 2000 proposals",
            1,
            7 * 7 * 21,
            38,
            50,
            600,
            800,
            2000,
            7,
            1 / 16,
            position_sensitive=True,
        ),
    ]
}


@dataclass(frozen=True)
class PyramidWorkload:
    """An FPN pyramid pooled by ``MultiScaleRoIAlign`` (op ``multi_scale_roi_align``).

    Levels P2-P5 (strides 4 to 32) of ``images`` images of ``image_h x image_w``;
    box sides log-uniform between 16 px and the image side.
    """

    name: str
    description: str
    images: int
    channels: int
    image_h: int
    image_w: int
    boxes_per_image: int
    output_sizes: tuple
    sampling_ratio: int = 2
    strides: tuple = (4, 8, 16, 32)
    devices: tuple = ("cuda",)  # 592 MB of maps and GBs of gradients: too large for a CPU run by default

    def make(self, seed: int = 0):
        """``({"p2": (N, C, H/4, W/4), ...}, [boxes (L, 4)] * N)``, float32 NumPy arrays."""
        rng = np.random.default_rng(seed)
        maps = {
            f"p{2 + i}": rng.standard_normal(
                (self.images, self.channels, -(-self.image_h // s), -(-self.image_w // s)), dtype=np.float32
            )
            for i, s in enumerate(self.strides)
        }
        boxes = []
        for _ in range(self.images):
            w = np.exp(rng.uniform(np.log(16), np.log(self.image_w), self.boxes_per_image))
            h = np.exp(rng.uniform(np.log(16), np.log(self.image_h), self.boxes_per_image))
            x1, y1 = rng.uniform(0, self.image_w - w), rng.uniform(0, self.image_h - h)
            boxes.append(np.column_stack([x1, y1, x1 + w, y1 + h]).astype(np.float32))
        return maps, boxes


PYRAMID_WORKLOADS = {
    w.name: w
    for w in [
        PyramidWorkload(
            "maskrcnn-fpn",
            "Mask R-CNN-like: FPN P2-P5 of 8 images at 800x1088, 256 channels, 512 boxes each",
            8,
            256,
            800,
            1088,
            512,
            (7, 14),
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
    floor_ms: float | None = None  # bytes that must move / the device's measured copy bandwidth (cuda)


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


def candidates(workload: Workload, op: str, mode: str, device: str = "cpu", jax: bool = False) -> list[Candidate]:
    """Everything installed that can run ``op`` in ``mode`` ("forward" or "forward+backward").

    ``jax`` adds ``roipool.jax`` (jitted; its XLA path compiles for minutes on ``vgg16``).
    """
    import roipool

    x, rois = workload.make()
    size, scale = workload.output_size, workload.spatial_scale
    extra = {} if op in ("roi_pool", "ps_roi_pool") else {"sampling_ratio": workload.sampling_ratio}
    if op == "roi_align":
        extra["aligned"] = workload.aligned
    if op == "roi_align_rotated":
        return rotated_candidates(workload, mode, device)
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

    # JAX compiles for tens of seconds per op and mode on a small CPU: the two workloads of its issue only
    if jax and workload.name in ("vgg16", "small-batch") and _optional("jax") is not None:
        out.extend(_jax_candidates(x, rois, op, mode, size, scale, extra, device))

    if torch is not None and (device == "cpu" or torch.cuda.is_available()):
        dev = torch.device(device)
        xt = torch.from_numpy(x).to(dev)
        rt = torch.from_numpy(rois).to(dev)
        if hasattr(roipool, op) and importlib.util.find_spec("roipool._torch._library") is not None:
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


def _jax_candidates(x, rois, op, mode, size, scale, extra, device):
    """roipool.jax, jitted, for each backend that runs on ``device``; compiled before timing.

    The compile time (tracing and XLA compilation, first call) is part of the
    implementation's name, since rows hold one figure.
    """
    import jax
    import jax.numpy as jnp

    import roipool.jax as rj

    platform = "cpu" if device == "cpu" else "gpu"
    try:
        dev = jax.devices(platform)[0]
    except RuntimeError:  # no such JAX backend installed
        return []
    fn = getattr(rj, op)
    xj, rj_ = jax.device_put(jnp.asarray(x), dev), jax.device_put(jnp.asarray(rois), dev)
    out = []
    for backend in ("xla", "callback") if platform == "cpu" else ("xla",):

        def forward(x, r, backend=backend):
            return fn(x, r, size, scale, backend=backend, **extra)

        if mode == "forward":
            step = jax.jit(forward)
        else:

            def train(x, r, forward=forward):
                # the output is returned too: XLA would otherwise drop a forward the backward does not read
                y, vjp = jax.vjp(lambda x: forward(x, r), x)
                return y, vjp(jnp.ones_like(y))[0]

            step = jax.jit(train)
        t0 = time.perf_counter()
        jax.block_until_ready(step(xj, rj_))
        compile_s = time.perf_counter() - t0
        out.append(
            Candidate(
                f"roipool.jax ({backend}, compile {compile_s:.1f} s)",
                lambda step=step: jax.block_until_ready(step(xj, rj_)),
                True,
            )
        )
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


def _pooler_candidate(impl, pooler, feats, boxes, shapes, mode, torch, is_ours=False):
    """A ``MultiScaleRoIAlign`` call (``forward``) or a training step (gradient for every level)."""
    sync = torch.cuda.synchronize if next(iter(feats.values())).is_cuda else (lambda: None)
    if mode == "forward":

        def run():
            with torch.no_grad():
                y = pooler(feats, boxes, shapes)
            sync()
            return y

    else:
        leaves = {k: v.detach().clone().requires_grad_(True) for k, v in feats.items()}
        with torch.no_grad():
            upstream = torch.ones_like(pooler(feats, boxes, shapes))

        def run():
            y = pooler(leaves, boxes, shapes)
            grads = torch.autograd.grad(y, list(leaves.values()), upstream)
            sync()
            return grads

    return Candidate(impl, run, is_ours)


def pyramid_candidates(workload: PyramidWorkload, output_size: int, mode: str, device: str) -> list[Candidate]:
    """roipool's and torchvision's ``MultiScaleRoIAlign`` on ``workload``, when torch can run on ``device``."""
    torch = _optional("torch")
    if torch is None or (device == "cuda" and not torch.cuda.is_available()):
        return []
    from roipool.nn import MultiScaleRoIAlign

    maps, boxes = workload.make()
    feats = {k: torch.from_numpy(v).to(device) for k, v in maps.items()}
    bt = [torch.from_numpy(b).to(device) for b in boxes]
    shapes = [(workload.image_h, workload.image_w)] * workload.images
    names, ratio = list(feats), workload.sampling_ratio
    out = [
        _pooler_candidate(
            "roipool (torch)", MultiScaleRoIAlign(names, output_size, ratio), feats, bt, shapes, mode, torch, True
        )
    ]
    if _optional("torchvision") is not None:
        import torchvision.ops

        pooler = torchvision.ops.MultiScaleRoIAlign(names, output_size, ratio)
        out.append(_pooler_candidate("torchvision", pooler, feats, bt, shapes, mode, torch))
    return out


def floor_bytes(map_bytes: int, output_bytes: int, mode: str) -> int:
    """Bytes that must cross memory: the output written, and for a training step also
    ``grad_output`` read and every cell of ``grad_input`` written (reading the map is
    not counted: a RoI reads only its footprint, which may be little of it)."""
    return output_bytes if mode == "forward" else 2 * output_bytes + map_bytes


def cuda_copy_bandwidth(torch, nbytes: int = 1 << 30) -> float:
    """Bytes per second of a device-to-device copy, counting bytes read and written (median of 5)."""
    a = torch.empty(nbytes // 4, dtype=torch.float32, device="cuda")
    b = torch.empty_like(a)
    b.copy_(a)
    times = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        b.copy_(a)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * nbytes / statistics.median(times)


class _CudaTimer:
    """Times a call between two CUDA events, after evicting L2 with a 256 MB write (as ``do_bench`` does)."""

    def __init__(self, torch):
        self.torch = torch
        self.flush = torch.empty(1 << 26, dtype=torch.float32, device="cuda")

    def __call__(self, run):
        self.flush.zero_()
        start = self.torch.cuda.Event(enable_timing=True)
        end = self.torch.cuda.Event(enable_timing=True)
        start.record()
        result = run()
        end.record()
        end.synchronize()
        return start.elapsed_time(end), result


def measure(
    cands: list[Candidate], repeat: int, warmup: int = 1, touch_bytes: int = 0, timer=None
) -> dict[str, list[float]]:
    """Interleaved timings in ms: each repeat runs every candidate once.

    The order rotates from one repeat to the next, and before each timed call
    ``touch_bytes`` of memory are written and freed (untimed). On a VM that
    hands freed memory back to its host after a second or two (free page
    reporting, as on our development VM), the first large allocation after a
    long call pays the host's page faults again, up to 300 ms for 200 MB;
    in a training loop the op runs often enough that its memory stays with
    the guest. Touching first gives every candidate that steady state.

    ``timer(run) -> (ms, result)`` replaces the wall clock (``_CudaTimer`` on a GPU).
    """
    for c in cands:
        for _ in range(warmup):
            c.run()
    times: dict[str, list[float]] = {c.impl: [] for c in cands}
    for r in range(repeat):
        shift = r % len(cands)
        for c in cands[shift:] + cands[:shift]:
            if timer is not None:
                ms, result = timer(c.run)
            else:
                _touch(touch_bytes)
                t0 = time.perf_counter()
                result = c.run()
                ms = (time.perf_counter() - t0) * 1e3
            times[c.impl].append(ms)
            del result
    return times


def machine(device: str = "cpu") -> dict:
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
    if device == "cuda":
        import torch

        info["gpu"] = torch.cuda.get_device_name(0)
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


OPS = ("roi_pool", "roi_align", "ps_roi_pool", "ps_roi_align", "roi_align_rotated", "prroi_pool")
MODES = ("forward", "forward+backward")


def run(
    workloads, repeat: int, device: str = "cpu", ops=OPS, bandwidth: float | None = None, jax: bool = False
) -> list[Row]:
    """Rows for every op of every workload; on ``cuda`` timed by CUDA events, with floors at
    ``bandwidth`` bytes/s (measured here when not given)."""
    timer = None
    if device == "cuda":
        import torch

        timer = _CudaTimer(torch)
        bandwidth = bandwidth or cuda_copy_bandwidth(torch)
    rows: list[Row] = []

    def block(wname, op, cands_for, map_bytes, output_bytes):
        forward_peers: list[Row] = []
        for mode in MODES:
            cands = cands_for(mode)
            if not any(c.is_ours for c in cands):
                continue
            times = measure(cands, repeat, touch_bytes=3 * output_bytes, timer=timer)
            timed = [
                Row(wname, op, mode, c.impl, statistics.median(times[c.impl]), [round(t, 3) for t in times[c.impl]])
                for c in cands
            ]
            ours = {c.impl for c in cands if c.is_ours}
            peers = [r for r in timed if r.impl not in ours]
            if mode == "forward":
                forward_peers = peers
            elif not peers:
                # ONNX Runtime has no backward: a training step is compared
                # with the peer's forward alone, as the goals are stated.
                peers = forward_peers
            for r in timed:
                if bandwidth:
                    r.floor_ms = floor_bytes(map_bytes, output_bytes, mode) / bandwidth * 1e3
                if peers and r.impl in ours:
                    best = min(peers, key=lambda p: p.median_ms)
                    r.speedup = best.median_ms / r.median_ms
                    r.baseline = f"{best.impl} {best.mode}"
            rows.extend(timed)

    for wname in workloads:
        if wname in PYRAMID_WORKLOADS:
            pw = PYRAMID_WORKLOADS[wname]
            k = pw.images * pw.boxes_per_image
            cells = sum(-(-pw.image_h // s) * -(-pw.image_w // s) for s in pw.strides)
            for size in pw.output_sizes:
                block(
                    wname,
                    f"multi_scale_roi_align {size}x{size}",
                    lambda mode, pw=pw, size=size: pyramid_candidates(pw, size, mode, device),
                    pw.images * pw.channels * cells * 4,
                    k * pw.channels * size * size * 4,
                )
            continue
        workload = WORKLOADS[wname]
        for op in ops:
            if op.startswith("ps_") != workload.position_sensitive:
                continue  # position-sensitive ops need C divisible by bins: workloads of their own
            if (op == "roi_align_rotated") != isinstance(workload, RotatedWorkload):
                continue  # rotated boxes: workloads of their own
            k = workload.images * workload.boxes_per_image
            map_bytes = workload.images * workload.channels * workload.height * workload.width * 4
            out_channels = (
                workload.channels // workload.output_size**2 if workload.position_sensitive else workload.channels
            )
            block(
                wname,
                op,
                lambda mode, op=op, w=workload: candidates(w, op, mode, device, jax),
                map_bytes,
                k * out_channels * workload.output_size**2 * 4,
            )
    return rows


def format_table(rows: list[Row]) -> str:
    floors = any(r.floor_ms is not None for r in rows)
    floor_head = f" {'floor ms':>9}" if floors else ""
    head = f"{'workload':<12} {'op':<10} {'mode':<17} {'implementation':<26} {'median ms':>10}{floor_head}  speed-up"
    lines = [head]
    for r in rows:
        ratio = f"{r.speedup:.1f}x vs {r.baseline}" if r.speedup is not None else ""
        floor = f" {r.floor_ms:>9.3f}" if floors and r.floor_ms is not None else (" " * 10 if floors else "")
        lines.append(f"{r.workload:<12} {r.op:<10} {r.mode:<17} {r.impl:<26} {r.median_ms:>10.3f}{floor}  {ratio}")
    return "\n".join(lines)


def main(args) -> int:
    known = {**WORKLOADS, **PYRAMID_WORKLOADS}
    defaults = [n for n in WORKLOADS if n != "tiny"]
    defaults += [n for n, w in PYRAMID_WORKLOADS.items() if args.device in w.devices]
    names = args.workload or defaults
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"roipool bench: unknown workload {unknown[0]!r}; choose from {', '.join(known)}")
    if args.repeat < 1:
        raise SystemExit("roipool bench: --repeat must be at least 1")
    if args.device == "cuda":
        torch = _optional("torch")
        if torch is None or not torch.cuda.is_available():
            raise SystemExit(
                "roipool bench: --device cuda needs torch and a GPU it can see (torch.cuda.is_available())"
            )
    bandwidth = cuda_copy_bandwidth(torch) if args.device == "cuda" else None
    rows = run(names, args.repeat, args.device, bandwidth=bandwidth, jax=getattr(args, "jax", False))
    info = machine(args.device)  # after the run, which starts Numba's threading layer
    if bandwidth:
        info["copy_bandwidth_gb_s"] = round(bandwidth / 1e9, 1)
    if args.json:
        print(json.dumps({"machine": info, "results": [r.__dict__ for r in rows]}, indent=2))
    else:
        print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))
        print(format_table(rows))
        print(f"(medians of {args.repeat} interleaved repeats; speed-up = the fastest peer's median / this median)")
    return 0


# ---- rotated RoIAlign: the dota workload, OpenVINO's ROIAlignRotated as the peer ----


@dataclass(frozen=True)
class RotatedWorkload(Workload):
    def make(self, seed: int = 0):
        """Feature map ``(N, C, H, W)`` float32 and rotated boxes ``(K, 6)`` ``[n, cx, cy, w, h, angle]``:
        sides log-uniform between 16 px and ``max_side``, centres uniform in the image, angles uniform."""
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((self.images, self.channels, self.height, self.width), dtype=np.float32)
        k = self.images * self.boxes_per_image
        w, h = np.exp(rng.uniform(np.log(16), np.log(512), (2, k)))
        cx, cy = rng.uniform(0, self.image_w, k), rng.uniform(0, self.image_h, k)
        angle = rng.uniform(-np.pi, np.pi, k)
        batch = np.repeat(np.arange(self.images), self.boxes_per_image)
        return x, np.column_stack([batch, cx, cy, w, h, angle]).astype(np.float32)


WORKLOADS["dota"] = RotatedWorkload(
    "dota", "1024x1024 aerial image, stride 8, 2000 rotated boxes (sides 16-512 px, any angle)",
    1, 256, 128, 128, 1024, 1024, 2000, 7, 1 / 8,
)  # fmt: skip


def rotated_candidates(workload: Workload, mode: str, device: str = "cpu") -> list[Candidate]:
    """roipool's roi_align_rotated (NumPy, torch) and OpenVINO's CPU ROIAlignRotated (forward, same threads);
    on ``cuda`` the torch path alone."""
    import numba

    import roipool

    x, rois = workload.make()
    args = (workload.output_size, workload.spatial_scale, workload.sampling_ratio, workload.aligned)
    out: list[Candidate] = []
    torch = _optional("torch")
    if device != "cpu":
        xt, rt = torch.from_numpy(x).to(device), torch.from_numpy(rois).to(device)
        extra = {"sampling_ratio": args[2], "aligned": args[3]}
        return [
            _torch_candidate("roipool (torch)", roipool.roi_align_rotated, xt, rt, *args[:2], extra, mode, torch, True)
        ]
    if mode == "forward":
        out.append(Candidate("roipool (numpy)", lambda: roipool.roi_align_rotated(x, rois, *args), True))
    else:
        upstream = np.ones_like(roipool.roi_align_rotated(x, rois, *args))

        def numpy_step():
            roipool.roi_align_rotated(x, rois, *args)
            return roipool.roi_align_rotated_backward(upstream, rois, x.shape, *args)

        out.append(Candidate("roipool (numpy)", numpy_step, True))
    if torch is not None:
        xt, rt = torch.from_numpy(x), torch.from_numpy(rois)
        out.append(
            _torch_candidate("roipool (torch)", roipool.roi_align_rotated, xt, rt, args[0], args[1],
                             {"sampling_ratio": args[2], "aligned": args[3]}, mode, torch, True)
        )  # fmt: skip
    ov = _optional("openvino")
    if ov is not None and mode == "forward" and workload.aligned:  # OpenVINO's op is always half-pixel aligned
        from openvino import opset15 as ops

        nodes = [ops.parameter(list(x.shape), np.float32), ops.parameter([len(rois), 5], np.float32)]
        nodes.append(ops.parameter([len(rois)], np.int32))  # static shapes: the plugin's best case
        size = workload.output_size
        node = ops.roi_align_rotated(*nodes, size, size, max(workload.sampling_ratio, 0), workload.spatial_scale, False)
        config = {"INFERENCE_NUM_THREADS": numba.get_num_threads(), "INFERENCE_PRECISION_HINT": "f32"}
        model = ov.Core().compile_model(ov.Model([node], nodes, "rotated"), "CPU", config)
        feeds = [x, np.ascontiguousarray(rois[:, 1:]), rois[:, 0].astype(np.int32)]
        out.append(Candidate("openvino", lambda: model(feeds)))
    return out
