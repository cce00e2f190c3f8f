"""The public ops on CUDA tensors, against the CPU path: the GPU run's correctness checks.

Run on a GPU machine by ``benchmarks/gpu/check.sh`` (``pytest -m "triton or gpu"``
with ``TRITON_INTERPRET`` unset). Everywhere else the module is skipped, except
under ``ROIPOOL_GPU_DRY_RUN=1``: then the same tests run on CPU tensors, so
that a typo in them is found before the few minutes a GPU is lent for (the
comparisons are then CPU against CPU and prove nothing about the kernels).

What is pinned, for every op forward and backward in float32, float64,
float16 and bfloat16: the pool ops give the CPU path's bits, the align family
its values to the compute dtype's rounding; ``torch.compile(fullgraph=True)``
gives eager's bits; two backward passes, and a pass under
``torch.use_deterministic_algorithms(True)``, give the same bits. The peak
memory of a backward is measured and written to ``$ROIPOOL_GPU_OUT`` when set.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import roipool  # noqa: E402

pytestmark = pytest.mark.gpu

DRY_RUN = os.environ.get("ROIPOOL_GPU_DRY_RUN", "0") not in ("", "0")
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
if torch.cuda.is_available() and not INTERPRET:
    DEVICE = "cuda"
elif DRY_RUN:
    DEVICE = "cpu"
else:
    pytest.skip("needs a GPU (or ROIPOOL_GPU_DRY_RUN=1 to rehearse on the CPU)", allow_module_level=True)

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
N, C, H, W, K = 2, 6, 17, 13, 24
PS_SIZE = (3, 2)

# rtol/atol of the align family against the CPU path: both compute 16-bit inputs
# in float32 and round once, so a float32-level difference can move the result
# by one unit in the last place of the 16-bit type.
TOLERANCE = {
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float64: dict(rtol=1e-12, atol=1e-12),
    torch.float16: dict(rtol=2e-3, atol=2e-3),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2),
}


def _boxes(rng, k=K):
    """Image-coordinate boxes at scale 0.5: some off the map, one inverted, one half-way after scaling."""
    xs = rng.uniform(-0.3 * 2 * W, 1.3 * 2 * W, (k, 2))
    ys = rng.uniform(-0.3 * 2 * H, 1.3 * 2 * H, (k, 2))
    rois = np.column_stack([rng.integers(0, N, k), xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]])
    rois[0, 1:] = [3.0, 5.0, 9.0, 11.0]
    rois[1, 1:] = [12.0, 12.0, 4.0, 4.0]
    return rois


# name -> (channels of the map, call(x, rois), exact): ``exact`` ops give the CPU path's bits.
OPS = {
    "roi_pool": (C, lambda x, r: roipool.roi_pool(x, r, (5, 4), 0.5), True),
    "roi_align": (C, lambda x, r: roipool.roi_align(x, r, (5, 4), 0.5, 2, True), False),
    "roi_align_legacy_adaptive": (C, lambda x, r: roipool.roi_align(x, r, (5, 4), 0.5, -1, False), False),
    "ps_roi_pool": (2 * PS_SIZE[0] * PS_SIZE[1], lambda x, r: roipool.ps_roi_pool(x, r, PS_SIZE, 0.5), True),
    "ps_roi_align": (2 * PS_SIZE[0] * PS_SIZE[1], lambda x, r: roipool.ps_roi_align(x, r, PS_SIZE, 0.5, -1), False),
}


def _case(name, dtype, seed=0):
    rng = np.random.default_rng(seed)
    channels = OPS[name][0]
    x = torch.from_numpy(rng.standard_normal((N, channels, H, W))).to(dtype)
    x[0, 0, 3, 2:5] = 1.0  # a tie for the max ops
    rois = torch.from_numpy(_boxes(rng)).to(dtype if dtype in (torch.float32, torch.float64) else torch.float32)
    return x, rois


def _forward_backward(name, x, rois, upstream=None):
    x = x.detach().clone().requires_grad_(True)
    y = OPS[name][1](x, rois)
    if upstream is None:
        gen = torch.Generator().manual_seed(1)
        upstream = torch.randn(y.shape, generator=gen, dtype=torch.float64).to(y.dtype).to(y.device)
    (g,) = torch.autograd.grad(y, x, upstream)
    return y.detach(), g, upstream


def _assert_matches(name, dtype, got, expected):
    if OPS[name][2]:
        assert torch.equal(got.cpu(), expected), f"{name} {dtype}: not the CPU path's bits"
    else:
        torch.testing.assert_close(got.cpu(), expected, **TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("name", list(OPS))
def test_every_op_forward_and_backward_on_the_gpu_matches_the_cpu_path(name, dtype):
    x, rois = _case(name, dtype)
    y_cpu, g_cpu, upstream = _forward_backward(name, x, rois)
    y, g, _ = _forward_backward(name, x.to(DEVICE), rois.to(DEVICE), upstream.to(DEVICE))
    assert y.device.type == DEVICE and y.dtype == dtype and g.dtype == dtype
    _assert_matches(name, dtype, y, y_cpu)
    _assert_matches(name, dtype, g, g_cpu)


@pytest.mark.parametrize("name", list(OPS))
def test_a_channels_last_map_on_the_gpu_gives_channels_last_results_of_the_same_bits(name):
    x, rois = _case(name, torch.float32)
    x, rois = x.to(DEVICE), rois.to(DEVICE)
    y, g, upstream = _forward_backward(name, x, rois)
    y_cl, g_cl, _ = _forward_backward(name, x.contiguous(memory_format=torch.channels_last), rois, upstream)
    for got, want in ((y_cl, y), (g_cl, g)):
        assert got.is_contiguous(memory_format=torch.channels_last) and not got.is_contiguous()
        assert torch.equal(got, want)


@pytest.mark.parametrize("name", list(OPS))
def test_compiled_ops_on_the_gpu_give_eager_bits(name):
    x, rois = _case(name, torch.float32)
    x, rois = x.to(DEVICE), rois.to(DEVICE)
    fn = OPS[name][1]
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True)
    assert torch.equal(compiled(x, rois), fn(x, rois))


@pytest.mark.parametrize("name", list(OPS))
def test_backward_repeats_bit_for_bit_and_under_deterministic_algorithms(name):
    x, rois = _case(name, torch.float32)
    x, rois = x.to(DEVICE), rois.to(DEVICE)
    _, first, upstream = _forward_backward(name, x, rois)
    _, second, _ = _forward_backward(name, x, rois, upstream)
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        _, third, _ = _forward_backward(name, x, rois, upstream)
    finally:
        torch.use_deterministic_algorithms(before)
    assert torch.equal(first, second) and torch.equal(first, third)


def test_multi_scale_roi_align_on_the_gpu_matches_the_cpu_path():
    from roipool.nn import MultiScaleRoIAlign

    rng = np.random.default_rng(5)
    pooler = MultiScaleRoIAlign(["p2", "p3"], 7, 2)
    feats = {
        "p2": torch.from_numpy(rng.standard_normal((2, 4, 32, 40)).astype(np.float32)),
        "p3": torch.from_numpy(rng.standard_normal((2, 4, 16, 20)).astype(np.float32)),
    }
    boxes = [torch.tensor([[4.0, 6.0, 60.0, 90.0], [10.0, 10.0, 30.0, 20.0]]), torch.tensor([[0.0, 0.0, 120.0, 80.0]])]
    sizes = [(128, 160), (128, 160)]
    expected = pooler(feats, boxes, sizes)
    got = pooler({k: v.to(DEVICE) for k, v in feats.items()}, [b.to(DEVICE) for b in boxes], sizes)
    torch.testing.assert_close(got.cpu(), expected, **TOLERANCE[torch.float32])


@pytest.mark.skipif(DEVICE != "cuda", reason="device memory is measured on a GPU only")
@pytest.mark.parametrize("name", ["roi_pool", "roi_align"])
def test_backward_peak_memory_is_measured_and_stays_near_grad_input(name):
    """vgg16-sized case: the extra memory of the deterministic backward, beside torchvision's when installed."""
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((1, 512, 38, 50)).astype(np.float32)).cuda()
    w = np.exp(rng.uniform(np.log(16), np.log(800), 2000))
    h = np.exp(rng.uniform(np.log(16), np.log(600), 2000))
    x1, y1 = rng.uniform(0, 800 - w), rng.uniform(0, 600 - h)
    rois = torch.from_numpy(np.column_stack([np.zeros(2000), x1, y1, x1 + w, y1 + h]).astype(np.float32)).cuda()
    calls = {"roipool": getattr(roipool, name)}
    try:
        import torchvision.ops

        calls["torchvision"] = getattr(torchvision.ops, name)
    except ImportError:
        pass
    extra = {"sampling_ratio": 2, "aligned": True} if name == "roi_align" else {}
    record = {}
    for impl, fn in calls.items():
        xg = x.detach().clone().requires_grad_(True)
        y = fn(xg, rois, 7, 1 / 16, **extra)
        upstream = torch.ones_like(y)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        (g,) = torch.autograd.grad(y, xg, upstream)
        torch.cuda.synchronize()
        record[impl] = {"peak_extra_bytes": torch.cuda.max_memory_allocated() - base, "grad_input_bytes": g.nbytes}
        del y, upstream, g, xg
    out = os.environ.get("ROIPOOL_GPU_OUT")
    if out:
        path = Path(out) / f"backward_memory_{name}.json"
        path.write_text(json.dumps(record, indent=2))
    ours = record["roipool"]
    # grad_input itself plus tables of a few MB (docs/gpu.md); a per-RoI staging buffer would be GBs.
    assert ours["peak_extra_bytes"] <= 2 * ours["grad_input_bytes"] + (64 << 20), record
