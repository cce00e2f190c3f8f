"""roi_pool on torch tensors: the RoI family's tester plus what is particular to RoIPool."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from .roi_family import OpLog, RoIOpTester, make_input, torch

# roi_family skips this module without torch, so it is imported first
# isort: split

import roipool  # noqa: E402
import roipool.nn  # noqa: E402
from roipool import reference  # noqa: E402
from roipool._torch import _library  # noqa: E402
from roipool._torch import roi_pool as torch_roi_pool  # noqa: E402
from roipool.cpu import roi_pool as cpu_roi_pool  # noqa: E402
from roipool.cpu._machine import avx512  # noqa: E402

from .test_checks import BAD_OUTPUT_SIZES, BAD_SCALES  # noqa: E402


class TestRoIPool(RoIOpTester):
    params = dict(output_size=(3, 2), spatial_scale=0.5)
    onnx_op_type = "MaxRoiPool"
    # on the CPU with AVX-512 the training forward is the inference op (its backward recomputes
    # the argmax); without, it stores the argmax (recompute_pays)
    train_op = "roipool::roi_pool" if avx512() else "roipool::roi_pool_with_argmax"
    infer_op = "roipool::roi_pool"

    def fn(self, input, boxes, output_size, spatial_scale=1.0):
        return roipool.roi_pool(input, boxes, output_size, spatial_scale)

    def make_layer(self, output_size, spatial_scale):
        return roipool.nn.RoIPool(output_size, spatial_scale)

    def expected_fn(self, x, rois, output_size, spatial_scale):
        return reference.roi_pool(x, rois, *output_size, spatial_scale)

    def expected_grad_fn(self, x, rois, grad, argmax, output_size, spatial_scale):
        return reference.roi_pool_backward(grad, argmax, rois, x.shape)

    def opcheck_cases(self, x, rois):
        args = (x, rois, 0.5, 3, 2)
        _, argmax = torch.ops.roipool.roi_pool_with_argmax(*args)
        grad = torch.randn(argmax.shape, dtype=x.dtype)
        return [
            (torch.ops.roipool.roi_pool.default, args),
            (torch.ops.roipool.roi_pool_with_argmax.default, args),
            (torch.ops.roipool.roi_pool_backward.default, (grad, argmax, rois, *x.shape)),
            (torch.ops.roipool.roi_pool_backward_recompute.default, (grad, *args)),
        ]

    @pytest.mark.parametrize("output_size, error", BAD_OUTPUT_SIZES)
    def test_bad_output_size(self, output_size, error):
        with pytest.raises(error, match="output_size"):
            roipool.roi_pool(torch.zeros((1, 2, 5, 5)), torch.zeros((1, 5)), output_size)

    @pytest.mark.parametrize("scale, error", BAD_SCALES)
    def test_bad_spatial_scale(self, scale, error):
        with pytest.raises(error, match="spatial_scale"):
            roipool.roi_pool(torch.zeros((1, 2, 5, 5)), torch.zeros((1, 5)), 2, scale)


def test_layer_matches_torchvisions_interface():
    layer = roipool.nn.RoIPool((7, 7), 1 / 16)
    assert repr(layer) == "RoIPool(output_size=(7, 7), spatial_scale=0.0625)"
    assert repr(roipool.nn.RoIPool(3, 0.5)) == "RoIPool(output_size=3, spatial_scale=0.5)"
    x = make_input((2, 3, 8, 8), torch.float32, "contiguous")
    boxes = [torch.tensor([[0.0, 0, 60, 60]]), torch.tensor([[16.0, 16, 100, 90]])]
    assert torch.equal(layer(x, boxes), roipool.roi_pool(x, boxes, 7, 1 / 16))


def test_channels_last_input_is_read_in_place():
    x = make_input((2, 5, 6, 7), torch.float32, "channels_last")
    nhwc = _library.cpu_nhwc(x, torch.float32)
    assert nhwc.__array_interface__["data"][0] == x.data_ptr() and nhwc.flags.c_contiguous


def test_outputs_share_memory_with_the_kernels(monkeypatch):
    # the returned tensors wrap the arrays the kernels wrote: no copy on the way out
    written = {}
    for name in ("launch_forward", "launch_forward_argmax"):
        launch = getattr(cpu_roi_pool, name)

        def spy(*args, _launch=launch, _name=name):
            written[_name] = [a.__array_interface__["data"][0] for a in args[2:]]
            return _launch(*args)

        monkeypatch.setattr(cpu_roi_pool, name, spy)
    x = make_input((1, 4, 6, 6), torch.float32, "contiguous")
    rois = torch.tensor([[0.0, 0, 0, 5, 5]])
    out = torch.ops.roipool.roi_pool(x, rois, 1.0, 2, 2)
    assert written["launch_forward"] == [out.data_ptr()]
    out, argmax = torch.ops.roipool.roi_pool_with_argmax(x, rois, 1.0, 2, 2)
    assert written["launch_forward_argmax"] == [out.data_ptr(), argmax.data_ptr()]


def test_direct_call_of_the_inference_op_is_differentiable_too():
    x = make_input((1, 2, 5, 5), torch.float64, "contiguous").requires_grad_()
    rois = torch.tensor([[0.0, 0, 0, 5, 5], [0, 1, 2, 4, 4]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: torch.ops.roipool.roi_pool(t, rois, 1.0, 2, 3), (x,))


def test_value_errors_are_the_same_when_compiled():
    compiled = torch.compile(lambda x, b: roipool.roi_pool(x, b, 2), fullgraph=True, backend="eager")
    with pytest.raises(ValueError, match=r"boxes\[0, 0\] is the batch index and must be in \[0, 1\)"):
        compiled(torch.zeros((1, 2, 5, 5)), torch.tensor([[3.0, 0, 0, 2, 2]]))


def test_importing_roipool_does_not_import_torch():
    code = "import roipool, sys; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_thread_pool_is_numbas_not_torchs():
    x = make_input((1, 3, 8, 8), torch.float32, "contiguous")
    rois = torch.tensor([[0.0, 0, 0, 7, 7], [0, 2, 2, 5, 6]])
    expected = roipool.roi_pool(x, rois, 3)
    before = (roipool.get_num_threads(), torch.get_num_threads())
    try:
        torch.set_num_threads(1)
        assert roipool.get_num_threads() == before[0]
        roipool.set_num_threads(1)
        assert torch.equal(roipool.roi_pool(x, rois, 3), expected)
    finally:
        roipool.set_num_threads(before[0])
        torch.set_num_threads(before[1])


def test_a_device_without_kernels_loads_its_backend_module_or_says_it_is_missing(tmp_path, monkeypatch):
    # The CUDA hook, exercised on the CPU: an op with no CPU kernel and a
    # backend module named for "cpu" behaves as roi_pool does on CUDA tensors.
    op = _library.define("_test_backend_hook", "(Tensor x) -> Tensor", cpu=None, fake=lambda x: torch.empty_like(x))
    monkeypatch.setitem(_library.BACKEND_MODULES, "cpu", "roipool_test_backend")
    with pytest.raises(NotImplementedError, match="no kernel for cpu tensors .the roipool_test_backend backend is not"):
        op(torch.ones(3))
    (tmp_path / "roipool_test_backend.py").write_text(
        "import torch\ntorch.library.register_kernel('roipool::_test_backend_hook', 'cpu', lambda x: x * 2)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert torch.equal(op(torch.ones(3)), torch.full((3,), 2.0))


def _ops_called(fn):
    with OpLog() as log:
        fn()
    return log.called


def _train_and_check(x, rois, output_size, scale):
    out = roipool.roi_pool(x, rois, output_size, scale)
    out.backward(torch.ones_like(out))
    expected_out, argmax = reference.roi_pool(x.detach().numpy(), rois.numpy(), *output_size, scale)
    expected = reference.roi_pool_backward(np.ones(expected_out.shape, np.float32), argmax, rois.numpy(), x.shape)
    assert out.detach().numpy().tobytes() == expected_out.tobytes()
    assert x.grad.numpy().tobytes() == expected.tobytes()


def test_cpu_training_keeps_no_argmax_and_the_backward_recomputes_it(monkeypatch):
    monkeypatch.setattr(torch_roi_pool, "avx512", lambda: True)
    x = make_input((2, 3, 9, 11), torch.float32, "contiguous", integers=True).requires_grad_()
    rois = torch.tensor([[0.0, 0, 0, 9, 7], [1, 2, 1, 6, 8], [0, 3, 3, 3, 3]])  # 4 cells per bin
    called = _ops_called(lambda: _train_and_check(x, rois, (3, 2), 0.5))
    assert "roipool::roi_pool_with_argmax" not in called and "roipool::roi_pool_backward" not in called
    assert called.count("roipool::roi_pool_backward_recompute") == 1


def test_cpu_training_over_very_large_bins_keeps_the_argmax(monkeypatch):
    monkeypatch.setattr(torch_roi_pool, "avx512", lambda: True)
    x = make_input((1, 3, 12, 13), torch.float32, "contiguous", integers=True).requires_grad_()
    rois = torch.tensor([[0.0, 0, 0, 12, 12], [0, 2, 1, 11, 12]])  # 1 x 1 output: 156 and 120 cells per bin
    called = _ops_called(lambda: _train_and_check(x, rois, (1, 1), 1.0))
    assert "roipool::roi_pool_with_argmax" in called and "roipool::roi_pool_backward" in called
    assert "roipool::roi_pool_backward_recompute" not in called
    # the threshold: up to 24 cells per bin re-scan
    assert torch_roi_pool.recompute_pays(x, rois, 1.0, 3, 3) and not torch_roi_pool.recompute_pays(x, rois, 1.0, 2, 2)


@pytest.mark.parametrize("wide", [True, False], ids=["recomputing backward", "stored argmax"])
def test_double_backward_of_the_training_routes(monkeypatch, wide):
    monkeypatch.setattr(torch_roi_pool, "avx512", lambda: wide)
    x = make_input((2, 2, 5, 6), torch.float64, "contiguous").requires_grad_()
    rois = torch.tensor([[0.0, 0, 0, 5, 4], [1, 1, 2, 4, 4], [0, 9, 9, 20, 20]], dtype=torch.float64)
    assert torch.autograd.gradgradcheck(lambda t: roipool.roi_pool(t, rois, (2, 3)), (x,))


def test_recomputing_backward_op_checks_its_grad():
    x = torch.zeros((1, 2, 5, 5))
    rois = torch.tensor([[0.0, 0, 0, 4, 4]])
    with pytest.raises(TypeError, match="grad must have the input's dtype"):
        torch.ops.roipool.roi_pool_backward_recompute(
            torch.zeros((1, 2, 2, 2), dtype=torch.float64), x, rois, 1.0, 2, 2
        )
    with pytest.raises(ValueError, match="grad must have shape"):
        torch.ops.roipool.roi_pool_backward_recompute(torch.zeros((1, 2, 3, 2)), x, rois, 1.0, 2, 2)


def test_the_argmax_training_op_is_differentiable_through_its_argmax():
    # the CUDA training path (and an opt-in on the CPU for very large bins)
    x = make_input((2, 3, 9, 11), torch.float32, "contiguous", integers=True).requires_grad_()
    rois = torch.from_numpy(TestRoIPool().rois()).float()
    out, argmax = torch.ops.roipool.roi_pool_with_argmax(x, rois, 0.5, 3, 2)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    out.backward(grad)
    expected = reference.roi_pool_backward(grad.numpy(), argmax.numpy(), rois.numpy(), x.shape)
    assert x.grad.numpy().tobytes() == expected.tobytes()
    x64 = make_input((2, 2, 5, 6), torch.float64, "contiguous").requires_grad_()
    rois64 = rois.double()[:6]
    assert torch.autograd.gradcheck(lambda t: torch.ops.roipool.roi_pool_with_argmax(t, rois64, 0.5, 2, 3)[0], (x64,))


def test_onnx_translation_table_exports_direct_op_calls():
    # A model that calls the registered op itself (not roipool.roi_pool) needs
    # the translation table with the dynamo exporter.
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")

    class Direct(torch.nn.Module):
        def forward(self, x, rois):
            return torch.ops.roipool.roi_pool(x, rois, 0.5, 3, 2)

    x = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 4, 10, 12), dtype=np.float32))
    rois = torch.tensor([[0, 1.0, 2.0, 15.0, 11.0], [0, 6.0, 0.0, 6.0, 19.0]])
    program = torch.onnx.export(
        Direct().eval(), (x, rois), dynamo=True, custom_translation_table=roipool.nn.onnx_translation_table()
    )
    assert "MaxRoiPool" in [node.op_type for node in program.model_proto.graph.node]
    session = ort.InferenceSession(program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    (got,) = session.run(None, dict(zip(names, [x.numpy(), rois.numpy()])))
    np.testing.assert_array_equal(got, roipool.roi_pool(x.numpy(), rois.numpy(), (3, 2), 0.5))


def test_argmax_backward_op_rejects_indices_outside_the_map():
    x = torch.rand(1, 3, 6, 7)
    rois = torch.tensor([[0, 0.0, 0.0, 5.0, 4.0]])
    out, argmax = torch.ops.roipool.roi_pool_with_argmax(x, rois, 1.0, 2, 2)
    assert torch.ops.roipool.roi_pool_backward(out, argmax, rois, 1, 3, 6, 7).shape == x.shape
    for bad in (argmax + 6 * 7, argmax - 6 * 7 - 2):
        with pytest.raises(ValueError, match="argmax holds indices outside"):
            torch.ops.roipool.roi_pool_backward(out, bad, rois, 1, 3, 6, 7)


@pytest.mark.parametrize("cells", ["small bins (re-scan)", "large bins (argmax)"])
def test_a_training_step_validates_the_boxes_and_builds_the_bins_once(monkeypatch, cells):
    monkeypatch.setattr(torch_roi_pool, "avx512", lambda: True)
    built = []

    class CountedBins(cpu_roi_pool.RoIPoolBins):
        def __init__(self, *args):
            built.append(args[0].shape)
            super().__init__(*args)

    monkeypatch.setattr(cpu_roi_pool, "RoIPoolBins", CountedBins)
    x = make_input((1, 3, 12, 13), torch.float32, "contiguous").requires_grad_()
    rois = torch.tensor([[0.0, 0, 0, 12, 12], [0, 2, 1, 11, 12]])
    output_size = (3, 3) if cells.startswith("small") else (1, 1)
    called = _ops_called(lambda: roipool.roi_pool(x, rois, output_size).sum().backward())
    assert ("roipool::roi_pool_backward_recompute" in called) == cells.startswith("small")
    assert built == [(2, 5)]  # once: the choice of backward, the forward and the backward share it


def test_numpy_only_functions_name_numpy_for_a_tensor():
    # roi_pool_with_argmax has no tensor form (autograd computes the gradient of roi_pool)
    with pytest.raises(TypeError, match=r"^input must be a NumPy array, got Tensor$"):
        roipool.roi_pool_with_argmax(torch.zeros((1, 1, 4, 4)), torch.zeros((1, 5)), 2)
    with pytest.raises(TypeError, match=r"^input must be a torch tensor, got ndarray$"):
        torch_roi_pool.roi_pool(np.zeros((1, 1, 4, 4), np.float32), np.zeros((1, 5)), 2)


def test_cpu_training_without_avx512_keeps_the_argmax_even_over_small_bins(monkeypatch):
    """The re-scan pays on AVX-512 only: on an AVX2-only CPU the argmax route was as fast or faster at every size."""
    x = make_input((2, 3, 9, 11), torch.float32, "contiguous", integers=True).requires_grad_()
    rois = torch.tensor([[0.0, 0, 0, 9, 7], [1, 2, 1, 6, 8], [0, 3, 3, 3, 3]])  # 4 cells per bin: small
    monkeypatch.setattr(torch_roi_pool, "avx512", lambda: True)
    assert torch_roi_pool.recompute_pays(x, rois, 0.5, 3, 2)
    monkeypatch.setattr(torch_roi_pool, "avx512", lambda: False)
    assert not torch_roi_pool.recompute_pays(x, rois, 0.5, 3, 2)
    called = _ops_called(lambda: _train_and_check(x, rois, (3, 2), 0.5))
    assert "roipool::roi_pool_with_argmax" in called and "roipool::roi_pool_backward_recompute" not in called


def test_cpu_training_on_a_map_whose_rescan_would_leave_l2_keeps_the_argmax(monkeypatch):
    from roipool.cpu import roi_pool as cpu_roi_pool

    x = make_input((2, 3, 9, 11), torch.float32, "contiguous", integers=True).requires_grad_()
    rois = torch.tensor([[0.0, 0, 0, 9, 7], [1, 2, 1, 6, 8], [0, 3, 3, 3, 3]])  # 4 cells per bin: small
    working_set = cpu_roi_pool.recompute_working_set(9, 11)
    assert working_set == 2 * 9 * 11 * 256
    monkeypatch.setattr(torch_roi_pool, "avx512", lambda: True)
    monkeypatch.setattr(torch_roi_pool, "l2_bytes", lambda: working_set)
    assert torch_roi_pool.recompute_pays(x, rois, 0.5, 3, 2)
    monkeypatch.setattr(torch_roi_pool, "l2_bytes", lambda: working_set - 1)
    assert not torch_roi_pool.recompute_pays(x, rois, 0.5, 3, 2)
    called = _ops_called(lambda: _train_and_check(x, rois, (3, 2), 0.5))
    assert "roipool::roi_pool_with_argmax" in called and "roipool::roi_pool_backward_recompute" not in called


def test_the_stored_argmax_route_in_channels_last_gives_the_contiguous_route_bits(monkeypatch):
    monkeypatch.setattr(torch_roi_pool, "l2_bytes", lambda: 0)  # every map too large: the argmax route
    rois = torch.tensor([[0.0, 0, 0, 9, 7], [1, 2, 1, 6, 8], [0, 3, 3, 3, 3], [1, 0, 0, 40, 40]])
    x = make_input((2, 147, 9, 11), torch.float32, "channels_last", integers=True).requires_grad_()
    ref = x.detach().contiguous().requires_grad_()
    out, want = roipool.roi_pool(x, rois, (3, 2), 0.5), roipool.roi_pool(ref, rois, (3, 2), 0.5)
    g = torch.randn(want.shape, generator=torch.Generator().manual_seed(2))
    called = _ops_called(lambda: out.backward(g.contiguous(memory_format=torch.channels_last)))
    want.backward(g)
    assert "roipool::roi_pool_backward" in called
    assert out.is_contiguous(memory_format=torch.channels_last) and torch.equal(out, want)
    assert x.grad.is_contiguous(memory_format=torch.channels_last) and torch.equal(x.grad, ref.grad)
