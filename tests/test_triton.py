"""Triton kernels against the CPU path and the references.

On a machine without a GPU these run under the Triton interpreter
(``TRITON_INTERPRET=1``, as ``make test`` and CI set it), which executes each
program in NumPy on CPU tensors: shapes stay tiny. With a GPU (and without
the interpreter) the same tests run on CUDA tensors.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

import roipool  # noqa: E402
from roipool import reference  # noqa: E402

pytestmark = pytest.mark.triton

from .helpers import triton_device  # noqa: E402

DEVICE = triton_device(torch)

from roipool import triton as rt  # noqa: E402

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
N, C, H, W, K = 2, 4, 9, 9, 6


def dtype_id(dtype):
    return str(dtype).removeprefix("torch.")


def feature_map(rng, dtype, n=N, c=C, h=H, w=W):
    x = torch.from_numpy(rng.standard_normal((n, c, h, w)).astype(np.float32)).to(dtype)
    x[0, 1, 2, 2:6] = float("nan")  # a NaN run: the first NaN of a bin wins
    x[1, 2] = 1.0  # a flat plane: ties go to the first cell in row-major order
    return x


def boxes(rng, k=K, n=N, h=H, w=W, scale=0.5):
    """Boxes in image coordinates: some off the map, one inverted, one exactly half-way."""
    img_h, img_w = h / scale, w / scale
    xs = rng.uniform(-0.4 * img_w, 1.3 * img_w, (k, 2))
    ys = rng.uniform(-0.4 * img_h, 1.3 * img_h, (k, 2))
    rois = np.column_stack([rng.integers(0, n, k), xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]])
    rois[0, 1:] = [3.0, 5.0, 9.0, 11.0]  # 1.5, 2.5 ... at scale 0.5: C rounding, away from zero
    rois[1, 1:] = [12.0, 12.0, 4.0, 4.0]  # end before start: one cell
    rois[2] = [0, 2.0, 2.0, 14.0, 8.0]  # covers the NaN run of feature_map
    return torch.from_numpy(rois)


def as_numpy32(t):
    """A tensor as a float32 NumPy array (exact for float16 and bfloat16)."""
    return t.detach().cpu().to(torch.float32 if t.dtype != torch.float64 else torch.float64).numpy()


# ---------------------------------------------------------------- roi_pool


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_roi_pool_forward_is_bit_identical_to_reference(dtype):
    rng = np.random.default_rng(1)
    x = feature_map(rng, dtype).to(DEVICE)
    rois = boxes(rng).to(dtype=dtype if dtype == torch.float64 else torch.float32, device=DEVICE)
    out, argmax = rt.roi_pool_forward(x, rois, 0.5, 3, 2)
    # float16 and bfloat16 are pooled in float32, as the CPU path does
    x32, rois32 = as_numpy32(x), as_numpy32(rois)
    expected, expected_argmax = reference.roi_pool(x32, rois32, 3, 2, 0.5)
    assert out.dtype == dtype and argmax.dtype == torch.int32
    np.testing.assert_array_equal(as_numpy32(out), expected)
    np.testing.assert_array_equal(argmax.cpu().numpy(), expected_argmax)
    assert (expected_argmax == -1).any() and np.isnan(expected).any()  # the cases are exercised
    only, none = rt.roi_pool_forward(x, rois, 0.5, 3, 2, with_argmax=False)
    assert none is None and torch.equal(only.isnan(), out.isnan())
    assert torch.equal(only.nan_to_num(), out.nan_to_num())


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_roi_pool_forward_equals_numpy_cpu_path(dtype):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    rois = boxes(rng).numpy()
    expected, expected_argmax = roipool.roi_pool_with_argmax(x, rois, (2, 3), 0.5)
    out, argmax = rt.roi_pool_forward(torch.from_numpy(x).to(DEVICE), torch.from_numpy(rois).to(DEVICE), 0.5, 2, 3)
    np.testing.assert_array_equal(out.cpu().numpy(), expected)
    np.testing.assert_array_equal(argmax.cpu().numpy(), expected_argmax)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_roi_pool_backward_is_bit_identical_to_cpu_order(dtype):
    rng = np.random.default_rng(3)
    x = feature_map(rng, dtype).nan_to_num().to(DEVICE)
    rois = boxes(rng, k=8).to(DEVICE)
    # overlapping boxes on one image, so cells receive several gradients
    rois[2:5] = torch.tensor([[1, 0.0, 0.0, 10.0, 10.0]] * 3, dtype=rois.dtype)
    out, argmax = rt.roi_pool_forward(x, rois, 0.5, 3, 3)
    grad = torch.from_numpy(rng.standard_normal(out.shape).astype(np.float32)).to(dtype).to(DEVICE)
    got = rt.roi_pool_backward(grad, argmax, rois, N, C, H, W)
    again = rt.roi_pool_backward(grad, argmax, rois, N, C, H, W)
    assert got.dtype == dtype and torch.equal(got, again)
    # the CPU path sums in float32 (float64 for float64) in RoI order, then rounds once
    expected = reference.roi_pool_backward(as_numpy32(grad), argmax.cpu().numpy(), as_numpy32(rois), (N, C, H, W))
    np.testing.assert_array_equal(as_numpy32(got), as_numpy32(torch.from_numpy(expected).to(dtype)))
    if dtype in (torch.float32, torch.float64):
        cpu = roipool.roi_pool_backward(grad.cpu().numpy(), argmax.cpu().numpy(), rois.cpu().numpy(), (N, C, H, W))
        np.testing.assert_array_equal(got.cpu().numpy(), cpu)
    assert (expected != 0).sum() > 10


LAUNCH_SETTINGS = [
    dict(forward_lanes=2048, forward_warps=4, backward_lanes=2048, backward_warps=4),
    dict(forward_lanes=64, forward_warps=1, backward_lanes=64, backward_warps=1),
    dict(backward="lists"),
]


@pytest.mark.parametrize("setting", LAUNCH_SETTINGS, ids=["wide", "narrow", "lists"])
def test_launch_settings_change_no_bits(setting, monkeypatch):
    """Lanes and warps per program and the backward's way to its pairs (``_launch.TUNING``) split the
    work differently, never the sums."""
    from roipool.triton import _launch

    rng = np.random.default_rng(12)
    x = feature_map(rng, torch.float32, c=6).nan_to_num().to(DEVICE)
    rois = boxes(rng, k=10).to(DEVICE)
    rois[3:6] = torch.tensor([[1, 0.0, 0.0, 10.0, 10.0]] * 3, dtype=rois.dtype)
    grad = torch.from_numpy(rng.standard_normal((10, 6, 3, 2)).astype(np.float32)).to(DEVICE)

    def run():
        out, argmax = rt.roi_pool_forward(x, rois, 0.5, 3, 2)
        aligned = rt.roi_align_forward(x, rois, 0.5, 3, 2, -1, True)
        return (
            out,
            argmax,
            rt.roi_pool_backward(grad, argmax, rois, N, 6, H, W),
            aligned,
            rt.roi_align_backward(grad, rois, 0.5, 3, 2, N, 6, H, W, -1, True),
        )

    default = run()
    for key, value in setting.items():
        monkeypatch.setitem(_launch.TUNING, key, value)
    for a, b in zip(default, run()):
        assert torch.equal(a, b)
    assert default[2].count_nonzero() > 10 and default[4].count_nonzero() > 10


def test_roi_pool_handles_empty_inputs():
    x = torch.zeros((1, 3, 4, 4), device=DEVICE)
    no_rois = torch.zeros((0, 5), device=DEVICE)
    out, argmax = rt.roi_pool_forward(x, no_rois, 1.0, 2, 2)
    assert out.shape == (0, 3, 2, 2) and argmax.shape == (0, 3, 2, 2)
    grad_input = rt.roi_pool_backward(out, argmax, no_rois, 1, 3, 4, 4)
    assert grad_input.shape == x.shape and not grad_input.any()


@pytest.mark.parametrize(
    "row,message",
    [
        ([2, 0, 0, 1, 1], r"boxes\[0, 0\] is the batch index and must be in \[0, 2\)"),
        ([0.5, 0, 0, 1, 1], "must be a whole number"),
        ([0, 0, float("nan"), 1, 1], "NaN or infinite"),
        ([0, 0, 0, 1e39, 1], "NaN or infinite"),  # finite in float64, infinite in float32
    ],
)
def test_forward_launchers_reject_bad_rois_with_the_cpu_paths_errors(row, message):
    x = torch.zeros((2, 6, 4, 4), device=DEVICE)
    rois = torch.tensor([row], dtype=torch.float64, device=DEVICE)
    for call in (
        lambda: rt.roi_pool_forward(x, rois, 1.0, 2, 2),
        lambda: rt.roi_align_forward(x, rois, 1.0, 2, 2, -1, False),
        lambda: rt.ps_roi_pool_forward(x, rois, 1.0, 1, 2),
    ):
        with pytest.raises(ValueError, match=message):
            call()


def test_backward_launchers_reject_batch_indices_outside_the_batch():
    grad = torch.zeros((1, 2, 1, 1), device=DEVICE)
    rois = torch.tensor([[3.0, 0, 0, 1, 1]], device=DEVICE)
    argmax = torch.zeros((1, 2, 1, 1), dtype=torch.int32, device=DEVICE)
    with pytest.raises(ValueError, match="batch indices"):
        rt.roi_pool_backward(grad, argmax, rois, 2, 2, 4, 4)
    with pytest.raises(ValueError, match="batch indices"):
        rt.roi_align_backward(grad, rois, 1.0, 1, 1, 2, 2, 4, 4, -1, False)


def test_launchers_refuse_cpu_tensors_outside_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="CUDA tensors"):
        rt.roi_pool_forward(torch.zeros((1, 1, 2, 2)), torch.zeros((1, 5)), 1.0, 1, 1)


# ---------------------------------------------------------------- align family
# Against roipool.reference, computed in float64 on the very inputs the
# kernels saw.


# float32 kernels differ from the float64 reference by float32 rounding; float16 and
# bfloat16 compute in float32 and round once at the end.
TOLERANCE = {
    torch.float64: dict(rtol=1e-12, atol=1e-12),
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float16: dict(rtol=2e-3, atol=2e-3),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2),
}

ALIGN_CASES = [  # (op, sampling_ratio, aligned)
    ("roi_align", -1, False),
    ("roi_align", 2, True),
    ("ps_roi_align", -1, None),
    ("ps_roi_align", 2, None),
    ("ps_roi_pool", None, None),
]


def run_forward(op, x, rois, scale, ph, pw, sampling_ratio, aligned):
    if op == "roi_align":
        return rt.roi_align_forward(x, rois, scale, ph, pw, sampling_ratio, aligned)
    if op == "ps_roi_align":
        return rt.ps_roi_align_forward(x, rois, scale, ph, pw, sampling_ratio)
    return rt.ps_roi_pool_forward(x, rois, scale, ph, pw)


def run_backward(op, grad, rois, scale, ph, pw, sampling_ratio, aligned, shape):
    if op == "roi_align":
        return rt.roi_align_backward(grad, rois, scale, ph, pw, *shape, sampling_ratio, aligned)
    if op == "ps_roi_align":
        return rt.ps_roi_align_backward(grad, rois, scale, ph, pw, sampling_ratio, *shape)
    return rt.ps_roi_pool_backward(grad, rois, scale, ph, pw, *shape)


def expected_forward(op, x, rois, scale, ph, pw, sampling_ratio, aligned):
    if op == "ps_roi_pool":
        return reference.ps_roi_pool(x, rois, ph, pw, scale)
    if op == "ps_roi_align":
        return reference.ps_roi_align(x, rois, ph, pw, scale, sampling_ratio)
    return reference.roi_align(x, rois, ph, pw, scale, sampling_ratio, aligned)


def expected_backward(op, grad, rois, shape, scale, ph, pw, sampling_ratio, aligned):
    if op == "ps_roi_pool":
        return reference.ps_roi_pool_backward(grad, rois, shape, scale)
    if op == "ps_roi_align":
        return reference.ps_roi_align_backward(grad, rois, shape, scale, sampling_ratio)
    return reference.roi_align_backward(grad, rois, shape, scale, sampling_ratio, aligned)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=dtype_id)
def test_ps_roi_pool_is_bit_identical_to_the_reference_both_ways(dtype):
    x, rois, ph, pw = align_inputs("ps_roi_pool", dtype, seed=9)
    rois = rois.to(dtype)
    x_np, rois_np = x.cpu().numpy(), rois.cpu().numpy()
    out = rt.ps_roi_pool_forward(x, rois, 0.5, ph, pw)
    np.testing.assert_array_equal(out.cpu().numpy(), reference.ps_roi_pool(x_np, rois_np, ph, pw, 0.5))
    grad = torch.from_numpy(np.random.default_rng(10).standard_normal(out.shape)).to(dtype).to(DEVICE)
    got = rt.ps_roi_pool_backward(grad, rois, 0.5, ph, pw, *x.shape)
    expected = reference.ps_roi_pool_backward(grad.cpu().numpy(), rois_np, tuple(x.shape), 0.5)
    np.testing.assert_array_equal(got.cpu().numpy(), expected)


def align_inputs(op, dtype, seed):
    rng = np.random.default_rng(seed)
    ph, pw = 3, 2
    channels = 2 * ph * pw if op.startswith("ps_") else C
    x = torch.from_numpy(rng.standard_normal((N, channels, H, W))).to(dtype)
    rois = boxes(rng)
    rois = rois.to(dtype if dtype == torch.float64 else torch.float32)
    return x.to(DEVICE), rois.to(DEVICE), ph, pw


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("op,sampling_ratio,aligned", ALIGN_CASES)
def test_align_family_forward_matches_definition(op, sampling_ratio, aligned, dtype):
    x, rois, ph, pw = align_inputs(op, dtype, seed=4)
    out = run_forward(op, x, rois, 0.5, ph, pw, sampling_ratio, aligned)
    # the definition on the very inputs the kernel saw (half types widen exactly)
    expected = expected_forward(
        op, as_numpy32(x).astype(np.float64), as_numpy32(rois).astype(np.float64), 0.5, ph, pw, sampling_ratio, aligned
    )
    assert out.dtype == dtype and out.shape == expected.shape
    np.testing.assert_allclose(as_numpy32(out), expected, **TOLERANCE[dtype])
    assert np.count_nonzero(expected) > expected.size // 3


# Backward: every op in float32 and float64; the half types (which share the
# float32 accumulation) on roi_align only, to keep the interpreter run short.
BACKWARD_CASES = [(*case, dtype) for case in ALIGN_CASES for dtype in (torch.float32, torch.float64)] + [
    ("roi_align", -1, False, torch.float16),
    ("roi_align", 2, True, torch.bfloat16),
]


@pytest.mark.parametrize(
    "op,sampling_ratio,aligned,dtype",
    BACKWARD_CASES,
    ids=[f"{c[0]}-{c[1]}-{c[2]}-{dtype_id(c[3])}" for c in BACKWARD_CASES],
)
def test_align_family_backward_matches_definition(op, sampling_ratio, aligned, dtype):
    x, rois, ph, pw = align_inputs(op, dtype, seed=5)
    rng = np.random.default_rng(6)
    out_shape = (rois.shape[0], x.shape[1] // (ph * pw) if op.startswith("ps_") else x.shape[1], ph, pw)
    grad = torch.from_numpy(rng.standard_normal(out_shape)).to(dtype).to(DEVICE)
    got = run_backward(op, grad, rois, 0.5, ph, pw, sampling_ratio, aligned, tuple(x.shape))
    assert got.dtype == dtype
    if DEVICE == "cuda":  # the interpreter runs programs one after another: nothing to race
        assert torch.equal(got, run_backward(op, grad, rois, 0.5, ph, pw, sampling_ratio, aligned, tuple(x.shape)))
    expected = expected_backward(
        op,
        as_numpy32(grad).astype(np.float64),
        as_numpy32(rois).astype(np.float64),
        tuple(x.shape),
        0.5,
        ph,
        pw,
        sampling_ratio,
        aligned,
    )
    np.testing.assert_allclose(as_numpy32(got), expected, **TOLERANCE[dtype])
    assert np.count_nonzero(expected) > 20


# ---------------------------------------------------------------- compiled for a real GPU


@pytest.mark.slow
def test_every_kernel_compiles_for_sm90_with_exact_division_and_no_fma():
    """The interpreter skips the compiler: compile each kernel to PTX for sm_90 (no GPU needed)."""
    import triton.backends.nvidia as nvidia

    if not (Path(nvidia.__file__).parent / "bin" / "ptxas").exists():
        pytest.skip("triton's bundled ptxas is missing")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "0"
    src = Path(roipool.__file__).resolve().parent.parent
    env["PYTHONPATH"] = os.pathsep.join([str(src), env.get("PYTHONPATH", "")])
    script = Path(__file__).with_name("triton_compile_check.py")
    result = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(": ok") == 95  # 19 kernels x (4 dtypes + ints specialised to 1)


# ---------------------------------------------------------------- the custom ops' CUDA kernels


def _torch_frontend_or_skip():
    return pytest.importorskip("roipool._torch._library", reason="the torch frontend is not in this tree")


def _roi_pool_op_args(device):
    rng = np.random.default_rng(8)
    x = feature_map(rng, torch.float32).nan_to_num().to(device)
    rois = boxes(rng).to(device)
    return x, rois


OP_NAMES = [
    "roi_pool",
    "roi_pool_with_argmax",
    "roi_pool_backward",
    "roi_align",
    "roi_align_backward",
    "roi_align_boxes_backward",
    "ps_roi_pool",
    "ps_roi_pool_backward",
    "ps_roi_align",
    "ps_roi_align_backward",
    "ps_roi_align_boxes_backward",
]


def op_args(name, device, channels_last=False):
    """Arguments for ``roipool::<name>``, filled in by the schema's argument names
    (with ``channels_last``, a channels-last map and a channels-last gradient asked for)."""
    real = getattr(torch.ops.roipool, name).default
    rng = np.random.default_rng(11)
    h = w = 6  # opcheck runs the op many times: smaller still than the other tests
    x = torch.from_numpy(rng.standard_normal((N, 12, h, w)).astype(np.float32)).to(device)  # 12 = 2 x 3 x 2 bins
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    rois = boxes(rng, k=3, h=h, w=w).float().to(device)
    values = dict(
        input=x,
        rois=rois,
        spatial_scale=0.5,
        pooled_height=3,
        pooled_width=2,
        sampling_ratio=2,
        aligned=True,
        batch_size=N,
        channels=12,
        height=h,
        width=w,
        channels_last=channels_last,
    )
    if name.endswith("_backward"):
        forward = name.removesuffix("_backward").removesuffix("_boxes")  # _boxes_backward: the boxes' gradient
        forward += "_with_argmax" if name == "roi_pool_backward" else ""
        out = getattr(torch.ops.roipool, forward)(*op_args(forward, device, channels_last))
        if isinstance(out, tuple):
            out, values["argmax"] = out
        values["grad"] = torch.from_numpy(rng.standard_normal(out.shape).astype(np.float32)).to(device)
    return tuple(values[a.name] for a in real._schema.arguments)


def _defined_op_or_skip(name):
    _torch_frontend_or_skip()
    if not hasattr(torch.ops.roipool, name):
        pytest.skip(f"roipool::{name} is not defined in this tree")
    return getattr(torch.ops.roipool, name).default


@pytest.mark.skipif(DEVICE != "cpu", reason="the interpreter stands in for the GPU here")
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("name", OP_NAMES)
def test_the_cuda_kernels_pass_opcheck_when_registered_as_a_backend_under_the_interpreter(name, channels_last):
    """opcheck on CPU: a twin of each op whose only real kernel is the Triton one.

    The twin has the real op's schema and fake kernel and no CPU kernel of its
    own; registering the schema-built Triton kernel as its CPU kernel makes the
    interpreter play the GPU, so opcheck exercises exactly what the CUDA
    registration installs. The twin's results are then compared with the CPU op,
    values and memory format (a channels-last map gives channels-last results).
    """
    real = _defined_op_or_skip(name)
    from roipool._torch import _library
    from roipool.triton import _register

    assert name in _register.REGISTERED
    twin = f"_triton_twin_{name}"
    if not hasattr(torch.ops.roipool, twin):
        signature = str(real._schema)
        op = _library.define(twin, signature[signature.index("(") :], cpu=None, fake=lambda *args: real(*args))
        kernel, reason = _register.cuda_kernel(name, real._schema)
        assert reason is None
        op.register_kernel("cpu", kernel)
    args = op_args(name, "cpu", channels_last)
    twin_op = getattr(torch.ops.roipool, twin).default
    torch.library.opcheck(twin_op, args)
    got, expected = twin_op(*args), real(*args)
    got = got if isinstance(got, tuple) else (got,)
    expected = expected if isinstance(expected, tuple) else (expected,)
    for g, e in zip(got, expected):
        assert g.stride() == e.stride()
        if name.startswith("roi_pool") or name.startswith("ps_roi_pool"):
            assert torch.equal(g, e)
        else:
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


needs_cuda = pytest.mark.skipif(DEVICE != "cuda", reason="needs a GPU (the CUDA dispatch key)")


class _deterministic:
    """``torch.use_deterministic_algorithms(True)`` for a block."""

    def __enter__(self):
        self.before = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True)

    def __exit__(self, *exc):
        torch.use_deterministic_algorithms(self.before)


@needs_cuda
@pytest.mark.parametrize("name", OP_NAMES)
def test_registered_cuda_ops_pass_opcheck_and_equal_the_cpu_ops(name):
    real = _defined_op_or_skip(name)
    args = op_args(name, "cuda")
    torch.library.opcheck(real, args)
    got = real(*args)
    expected = real(*(a.cpu() if isinstance(a, torch.Tensor) else a for a in args))
    got = got if isinstance(got, tuple) else (got,)
    expected = expected if isinstance(expected, tuple) else (expected,)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g.cpu(), e, rtol=1e-5, atol=1e-5)


@needs_cuda
def test_compiled_roi_pool_on_cuda_matches_eager_and_its_backward_repeats_bit_for_bit():
    _torch_frontend_or_skip()
    x, rois = _roi_pool_op_args("cuda")
    x.requires_grad_(True)

    def f(x, rois):
        return roipool.roi_pool(x, rois, (3, 2), 0.5)

    eager = f(x, rois)
    compiled = torch.compile(f, fullgraph=True)(x, rois)
    assert torch.equal(eager, compiled)
    grads = []
    with _deterministic():
        for _ in range(2):
            (g,) = torch.autograd.grad(f(x, rois), x, torch.ones_like(eager))
            grads.append(g)
    assert torch.equal(grads[0], grads[1])
    cpu = roipool.roi_pool(x.detach().cpu().requires_grad_(True), rois.cpu(), (3, 2), 0.5)
    assert torch.equal(eager.detach().cpu(), cpu.detach())


# ---------------------------------------------------------------- random cases


@pytest.mark.parametrize("seed", range(4))
def test_random_cases_match_the_references_for_every_op_both_ways(seed):
    """Random shapes, scales, boxes (off the map, half-way, inverted), float32 and float64."""
    rng = np.random.default_rng(2000 + seed)
    dtype = [np.float32, np.float64][seed % 2]
    n, c, h, w, k = (
        int(rng.integers(1, 3)),
        int(rng.integers(1, 4)),
        int(rng.integers(1, 13)),
        int(rng.integers(1, 13)),
        int(rng.integers(1, 7)),
    )
    ph, pw = int(rng.integers(1, 5)), int(rng.integers(1, 5))
    scale = float(rng.choice([1.0, 0.5, 1 / 16, 1 / 3]))
    sampling_ratio, aligned = int(rng.choice([-1, 1, 2])), bool(seed % 3 == 1)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    x_ps = rng.standard_normal((n, c * ph * pw, h, w)).astype(dtype)
    xs = np.round(rng.uniform(-0.4 * w / scale, 1.4 * w / scale, (k, 2)) * 2) / 2
    ys = np.round(rng.uniform(-0.4 * h / scale, 1.4 * h / scale, (k, 2)) * 2) / 2
    rois = np.column_stack([rng.integers(0, n, k), xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]]).astype(dtype)
    grad = rng.standard_normal((k, c, ph, pw)).astype(dtype)
    t = lambda a: torch.from_numpy(a).to(DEVICE)  # noqa: E731
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    as64 = lambda a: a.astype(np.float64)  # noqa: E731

    out, argmax = rt.roi_pool_forward(t(x), t(rois), scale, ph, pw)
    expected, expected_argmax = reference.roi_pool(x, rois, ph, pw, dtype(scale))
    np.testing.assert_array_equal(out.cpu().numpy(), expected)
    np.testing.assert_array_equal(argmax.cpu().numpy(), expected_argmax)
    got = rt.roi_pool_backward(t(grad), argmax, t(rois), n, c, h, w).cpu().numpy()
    np.testing.assert_array_equal(got, roipool.roi_pool_backward(grad, expected_argmax, rois, x.shape))

    got = rt.roi_align_forward(t(x), t(rois), scale, ph, pw, sampling_ratio, aligned).cpu().numpy()
    np.testing.assert_allclose(
        got, reference.roi_align(as64(x), as64(rois), ph, pw, scale, sampling_ratio, aligned), **tol
    )
    got = rt.roi_align_backward(t(grad), t(rois), scale, ph, pw, n, c, h, w, sampling_ratio, aligned).cpu().numpy()
    expected = reference.roi_align_backward(as64(grad), as64(rois), x.shape, scale, sampling_ratio, aligned)
    np.testing.assert_allclose(got, expected, **tol)

    got = rt.ps_roi_pool_forward(t(x_ps), t(rois), scale, ph, pw).cpu().numpy()
    np.testing.assert_array_equal(got, reference.ps_roi_pool(x_ps, rois, ph, pw, scale))
    got = rt.ps_roi_pool_backward(t(grad), t(rois), scale, ph, pw, *x_ps.shape).cpu().numpy()
    np.testing.assert_array_equal(got, reference.ps_roi_pool_backward(grad, rois, x_ps.shape, scale))

    got = rt.ps_roi_align_forward(t(x_ps), t(rois), scale, ph, pw, sampling_ratio).cpu().numpy()
    np.testing.assert_allclose(
        got, reference.ps_roi_align(as64(x_ps), as64(rois), ph, pw, scale, sampling_ratio), **tol
    )
    got = rt.ps_roi_align_backward(t(grad), t(rois), scale, ph, pw, sampling_ratio, *x_ps.shape).cpu().numpy()
    expected = reference.ps_roi_align_backward(as64(grad), as64(rois), x_ps.shape, scale, sampling_ratio)
    np.testing.assert_allclose(got, expected, **tol)


# ---------------------------------------------------------------- roi_align: gradient with respect to the boxes


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=dtype_id)
@pytest.mark.parametrize("sampling_ratio, aligned", [(2, True), (-1, False)])
def test_roi_align_boxes_gradient_matches_the_cpu_op(dtype, sampling_ratio, aligned):
    rng = np.random.default_rng(21)
    x = torch.from_numpy(rng.standard_normal((N, 5, 7, 8))).to(dtype)
    rois = boxes(rng, k=5, h=7, w=8).to(dtype)
    rois[3, 1:] = torch.tensor([2.1, 2.2, 2.6, 2.9], dtype=dtype)  # under one cell
    grad = torch.from_numpy(rng.standard_normal((5, 5, 2, 3))).to(dtype)
    args = (0.5, 2, 3, sampling_ratio, aligned)
    got = rt.roi_align.roi_align_boxes_backward(grad.to(DEVICE), x.to(DEVICE), rois.to(DEVICE), *args)
    want = torch.ops.roipool.roi_align_boxes_backward(grad, x, rois, *args)
    assert got.dtype == dtype and got.shape == (5, 5) and not got[:, 0].any()
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(got.cpu(), want, rtol=tol, atol=tol)
    again = rt.roi_align.roi_align_boxes_backward(grad.to(DEVICE), x.to(DEVICE), rois.to(DEVICE), *args)
    assert torch.equal(got, again)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=dtype_id)
@pytest.mark.parametrize("sampling_ratio", [2, -1])
def test_ps_roi_align_boxes_gradient_matches_the_cpu_op(dtype, sampling_ratio):
    rng = np.random.default_rng(22)
    x = torch.from_numpy(rng.standard_normal((N, 12, 7, 8))).to(dtype)  # 2 output channels x 3 x 2 bins
    rois = boxes(rng, k=5, h=7, w=8).to(dtype)
    rois[3, 1:] = torch.tensor([2.1, 2.2, 2.1, 2.9], dtype=dtype)  # no width: coincident samples
    rois[4, 1:] = torch.tensor([-3.0, 5.5, 20.0, 30.0], dtype=dtype)  # past the map's edges
    grad = torch.from_numpy(rng.standard_normal((5, 2, 3, 2))).to(dtype)
    args = (0.5, 3, 2, sampling_ratio)
    got = rt.ps_roi.ps_roi_align_boxes_backward(grad.to(DEVICE), x.to(DEVICE), rois.to(DEVICE), *args)
    want = torch.ops.roipool.ps_roi_align_boxes_backward(grad, x, rois, *args)
    assert got.dtype == dtype and got.shape == (5, 5) and not got[:, 0].any()
    assert want[:, 1:].abs().min() > 0
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(got.cpu(), want, rtol=tol, atol=tol)
    again = rt.ps_roi.ps_roi_align_boxes_backward(grad.to(DEVICE), x.to(DEVICE), rois.to(DEVICE), *args)
    assert torch.equal(got, again)
