"""Everything that can run an op of a workload: roipool's paths and every installed peer.

A :class:`Candidate` is one implementation of one op and mode; ``run()`` is
what gets timed. Peers: ONNX Runtime (``MaxRoiPool``, ``RoiAlign``; forward
only), torchvision's ops (forward, forward+backward), Intel Extension for
PyTorch's ``roi_align`` (forward, forward+backward), OpenVINO's CPU
``ROIPooling``, ``ROIAlign`` and ``ROIAlignRotated`` (forward), when
importable. A peer's values are checked against roipool's before it is
timed.
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .workloads import PyramidWorkload, Workload


@dataclass
class Candidate:
    """One implementation of one op and mode: ``run()`` is timed."""

    impl: str
    run: Callable[[], object]
    is_ours: bool = False


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
        # a channels-last workload's NumPy arrays go in and come out channels-last (layout="nhwc")
        xn, kw = (x.transpose(0, 2, 3, 1), {"layout": "nhwc"}) if workload.channels_last else (x, {})
        # The upstream gradient of a training step is made once, as for torch below.
        upstream = np.ones_like(fn(xn, rois, size, scale, **extra, **kw)) if mode != "forward" else None
        if mode == "forward":
            out.append(Candidate("roipool (numpy)", lambda: fn(xn, rois, size, scale, **extra, **kw), True))
        elif op == "roi_pool":

            def numpy_train_step():
                _, argmax = roipool.roi_pool_with_argmax(xn, rois, size, scale, **kw)
                return roipool.roi_pool_backward(upstream, argmax, rois, xn.shape, **kw)

            def numpy_recompute_step():
                roipool.roi_pool(xn, rois, size, scale, **kw)
                return roipool.roi_pool_backward(upstream, None, rois, xn.shape, input=xn, spatial_scale=scale, **kw)

            out.append(Candidate("roipool (numpy)", numpy_train_step, True))
            out.append(Candidate("roipool (numpy, no argmax)", numpy_recompute_step, True))
        elif hasattr(roipool, f"{op}_backward"):
            backward = getattr(roipool, f"{op}_backward")

            def numpy_align_step():
                fn(xn, rois, size, scale, **extra, **kw)
                return backward(upstream, rois, xn.shape, size, scale, **extra, **kw)

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

        if device == "cpu" and op == "roi_align" and importlib.util.find_spec("intel_extension_for_pytorch"):
            out.extend(_ipex_candidates(xt, rt, size, scale, extra, mode, torch))

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
    if device == "cpu" and mode == "forward" and op in ("roi_pool", "roi_align") and _optional("openvino"):
        out.extend(_openvino_candidates(workload, x, rois, op))
    return out


def _openvino_model(outputs, params, name):
    """An OpenVINO model compiled for the CPU plugin with roipool's thread count, in float32."""
    import openvino as ov

    import roipool

    config = {"INFERENCE_NUM_THREADS": roipool.get_num_threads(), "INFERENCE_PRECISION_HINT": "f32"}
    return ov.Core().compile_model(ov.Model(outputs, params, name), "CPU", config)


def _openvino_candidates(workload, x, rois, op) -> list[Candidate]:
    """OpenVINO's CPU ``ROIPooling`` or ``ROIAlign`` (static shapes, NCHW: its only layout), checked first.

    Its ``ROIAlign`` computes torchvision's op with ``aligned_mode``
    ``half_pixel_for_nn`` (``aligned=True``) or ``asymmetric`` (``False``);
    its ``half_pixel`` is something else. Its ``ROIPooling`` agrees with
    roipool bit for bit on ``vgg16``, but on ``maskrcnn`` 15 of 512 RoIs
    differ in whole rows or columns of bins: it places bin edges exactly, in
    integers, where roipool (like torchvision) computes them in floating
    point (``docs/semantics.md``). RoIs that differ by more than 1e-3 are
    counted, and the peer is timed unless more than a tenth of them do.
    """
    import sys

    from openvino import opset15 as ops

    import roipool

    size, scale = workload.output_size, workload.spatial_scale
    if op == "roi_pool":
        params = [ops.parameter(list(x.shape), np.float32), ops.parameter(list(rois.shape), np.float32)]
        model = _openvino_model([ops.roi_pooling(*params, [size, size], scale, "max")], params, "roi_pool")
        feeds = [x, rois]
        want = roipool.roi_pool(x, rois, size, scale)
    else:
        params = [ops.parameter(list(x.shape), np.float32), ops.parameter([len(rois), 4], np.float32)]
        params.append(ops.parameter([len(rois)], np.int32))
        ratio, mode = max(workload.sampling_ratio, 0), "half_pixel_for_nn" if workload.aligned else "asymmetric"
        model = _openvino_model([ops.roi_align(*params, size, size, ratio, scale, "avg", mode)], params, "roi_align")
        feeds = [x, np.ascontiguousarray(rois[:, 1:]), rois[:, 0].astype(np.int32)]
        want = roipool.roi_align(x, rois, size, scale, workload.sampling_ratio, workload.aligned)
    got = next(iter(model(feeds).values()))
    if got.shape != want.shape:
        print(f"openvino {op} returns shape {got.shape}, not {want.shape}: not timed", file=sys.stderr)
        return []
    differ = int((np.abs(got - want).reshape(len(rois), -1).max(axis=1, initial=0) > 1e-3).sum())
    if differ:
        print(f"openvino {op}: {differ} of {len(rois)} RoIs differ from roipool's by more than 1e-3", file=sys.stderr)
    if differ > len(rois) // 10:
        return []
    return [Candidate("openvino", lambda: model(feeds))]


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
        return _prroi_gpu_candidates(workload, x, rois, mode, device, torch)
    # a channels-last workload's NumPy arrays go in and come out channels-last, as for the other ops
    xn, kw = (x.transpose(0, 2, 3, 1), {"layout": "nhwc"}) if workload.channels_last else (x, {})
    if mode == "forward":
        return [
            Candidate("roipool (numpy)", lambda: roipool.prroi_pool(xn, rois, size, scale, **kw), True),
            Candidate(
                f"roi_align s={workload.sampling_ratio} (numpy)",
                lambda: roipool.roi_align(xn, rois, size, scale, workload.sampling_ratio, workload.aligned, **kw),
            ),
        ]
    upstream = np.ones_like(roipool.prroi_pool(xn, rois, size, scale, **kw))

    def numpy_step():
        roipool.prroi_pool(xn, rois, size, scale, **kw)
        return (
            roipool.prroi_pool_backward(upstream, rois, xn.shape, size, scale, **kw),
            roipool.prroi_pool_boxes_backward(upstream, xn, rois, size, scale, **kw),
        )

    out = [Candidate("roipool (numpy)", numpy_step, True)]
    if torch is not None:
        xg = torch.from_numpy(x).requires_grad_(True)
        rg = torch.from_numpy(rois).requires_grad_(True)
        ug = torch.from_numpy(upstream)
        ug = ug.permute(0, 3, 1, 2) if workload.channels_last else ug  # a channels_last tensor, NCHW-shaped
        out.append(
            Candidate(
                "roipool (torch)",
                lambda: torch.autograd.grad(roipool.prroi_pool(xg, rg, size, scale), (xg, rg), ug),
                True,
            )
        )
    return out


def _prroi_gpu_candidates(workload, x, rois, mode, device, torch) -> list[Candidate]:
    """The torch path on ``device``: prroi_pool (forward+backward with both gradients) beside roi_align's forward."""
    import roipool

    if torch is None or not torch.cuda.is_available():
        return []
    size, scale = workload.output_size, workload.spatial_scale
    xt, rt = torch.from_numpy(x).to(device), torch.from_numpy(rois).to(device)
    align = {"sampling_ratio": workload.sampling_ratio, "aligned": workload.aligned}
    label = f"roi_align s={workload.sampling_ratio} (torch)"
    yardstick = _torch_candidate(label, roipool.roi_align, xt, rt, size, scale, align, "forward", torch)
    if mode == "forward":
        return [_torch_candidate("roipool (torch)", roipool.prroi_pool, xt, rt, size, scale, {}, mode, torch, True),
                yardstick]  # fmt: skip
    xg, rg = xt.clone().requires_grad_(True), rt.clone().requires_grad_(True)
    with torch.no_grad():
        upstream = torch.ones_like(roipool.prroi_pool(xt, rt, size, scale))

    def step():
        grads = torch.autograd.grad(roipool.prroi_pool(xg, rg, size, scale), (xg, rg), upstream)
        torch.cuda.synchronize()
        return grads

    return [Candidate("roipool (torch)", step, True)]  # compared with the forward above, as on the CPU


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


def _ipex_candidates(xt, rt, size, scale, extra, mode, torch) -> list[Candidate]:
    """Intel Extension for PyTorch's ``roi_align`` (its channels-last CPU kernel), when importable.

    It needs its own torch (``torch==2.8.0`` beside ``intel_extension_for_pytorch==2.8.0``, a
    scratch venv). Its values are checked against roipool's before it is timed: a peer that
    computes something else is not timed (its channels-last path differs by about 1e-4).
    """
    import sys

    import intel_extension_for_pytorch as ipex

    import roipool

    module = getattr(ipex.nn, "RoIAlign", None) or ipex.nn.modules._roi_align.RoIAlign  # 2.8 has only the latter
    layer = module((size, size), scale, extra["sampling_ratio"], aligned=extra["aligned"])
    with torch.no_grad():
        got, want = layer(xt, rt), roipool.roi_align(xt, rt, size, scale, **extra)
    error = (got - want).abs().max().item() if got.shape == want.shape else float("inf")
    if not error <= 1e-3:
        print(f"intel-extension-for-pytorch roi_align differs from roipool's by {error}: not timed", file=sys.stderr)
        return []
    return [
        _torch_candidate(
            "intel-extension-for-pytorch", lambda x, r, *_, **__: layer(x, r), xt, rt, size, scale, extra, mode, torch
        )
    ]


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


def rotated_candidates(workload: Workload, mode: str, device: str = "cpu") -> list[Candidate]:
    """roipool's roi_align_rotated (NumPy, torch) and OpenVINO's CPU ROIAlignRotated (forward, same threads);
    on ``cuda`` the torch path alone."""

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
    if _optional("openvino") is not None and mode == "forward" and workload.aligned:  # OpenVINO's op is always aligned
        from openvino import opset15 as ops

        nodes = [ops.parameter(list(x.shape), np.float32), ops.parameter([len(rois), 5], np.float32)]
        nodes.append(ops.parameter([len(rois)], np.int32))  # static shapes: the plugin's best case
        size = workload.output_size
        node = ops.roi_align_rotated(*nodes, size, size, max(workload.sampling_ratio, 0), workload.spatial_scale, False)
        model = _openvino_model([node], nodes, "rotated")
        feeds = [x, np.ascontiguousarray(rois[:, 1:]), rois[:, 0].astype(np.int32)]
        out.append(Candidate("openvino", lambda: model(feeds)))
    return out
