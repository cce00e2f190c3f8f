"""roi_align on torch tensors: the RoI family's tester plus what is particular to RoIAlign."""

from __future__ import annotations

import io
import math
from collections import OrderedDict

import numpy as np
import pytest

from .roi_family import RoIOpTester, make_input, make_rois, torch

# roi_family skips this module without torch, so it is imported first
# isort: split

import roipool  # noqa: E402
import roipool.nn  # noqa: E402
from roipool import reference  # noqa: E402

TOLERANCE = {
    torch.float64: dict(rtol=1e-12, atol=1e-12),
    torch.float32: dict(rtol=2e-5, atol=2e-5),
    # computed in float32: the results may round to a neighbouring 16-bit value
    torch.float16: dict(rtol=2e-3, atol=2e-3),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2),
}


class TestRoIAlign(RoIOpTester):
    params = dict(output_size=(3, 2), spatial_scale=0.5, sampling_ratio=-1, aligned=True)
    onnx_op_type = "RoiAlign"
    # one op for both: the backward needs no state from the forward
    train_op = infer_op = "roipool::roi_align"

    def fn(self, input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False):
        return roipool.roi_align(input, boxes, output_size, spatial_scale, sampling_ratio, aligned)

    def make_layer(self, output_size, spatial_scale, sampling_ratio, aligned):
        return roipool.nn.RoIAlign(output_size, spatial_scale, sampling_ratio, aligned)

    def expected_fn(self, x, rois, output_size, spatial_scale, sampling_ratio, aligned):
        return reference.roi_align(x, rois, *output_size, spatial_scale, sampling_ratio, aligned), None

    def expected_grad_fn(self, x, rois, grad, state, output_size, spatial_scale, sampling_ratio, aligned):
        return reference.roi_align_backward(grad, rois, x.shape, spatial_scale, sampling_ratio, aligned)

    def rois(self, k=14, seed=0):
        # quarters below 64 are exact in bfloat16, so boxes given in a 16-bit
        # dtype still describe the reference's boxes (unlike RoIPool, RoIAlign
        # does not round them to whole cells)
        rois = np.round(super().rois(k, seed) * 4) / 4
        assert np.abs(rois).max() < 64
        return rois

    def forward_tolerance(self, dtype):
        return TOLERANCE[dtype]

    def grad_tolerance(self, dtype):
        return TOLERANCE[dtype]

    def opcheck_cases(self, x, rois):
        p = self.params
        args = (x, rois, p["spatial_scale"], *p["output_size"], p["sampling_ratio"], p["aligned"])
        grad = torch.randn((rois.shape[0], x.shape[1], *p["output_size"]), dtype=x.dtype)
        backward_args = (grad, rois, p["spatial_scale"], *p["output_size"], *x.shape, p["sampling_ratio"], p["aligned"])
        return [
            (torch.ops.roipool.roi_align.default, args),
            (torch.ops.roipool.roi_align_backward.default, backward_args),
        ]


class TestRoIAlignLegacy(TestRoIAlign):
    """The legacy pixel model with a fixed sampling grid."""

    params = dict(output_size=(2, 3), spatial_scale=0.25, sampling_ratio=2, aligned=False)


def test_layer_matches_torchvisions_interface():
    layer = roipool.nn.RoIAlign((7, 7), 1 / 16, 2)
    assert repr(layer) == "RoIAlign(output_size=(7, 7), spatial_scale=0.0625, sampling_ratio=2, aligned=False)"
    x = make_input((2, 3, 8, 8), torch.float32, "contiguous")
    boxes = [torch.tensor([[0.0, 0, 60, 60]]), torch.tensor([[16.0, 16, 100, 90]])]
    assert torch.equal(layer(x, boxes), roipool.roi_align(x, boxes, 7, 1 / 16, 2, False))


@pytest.mark.parametrize("sampling_ratio, aligned", [(-1, True), (0, False), (2, True), (3, False)])
def test_torch_and_numpy_paths_give_the_same_bits(sampling_ratio, aligned):
    x = make_input((2, 5, 9, 10), torch.float32, "channels_last", seed=2)
    rois = make_rois(2, 9, 10, 0.5, k=20, seed=2)
    got = roipool.roi_align(x, torch.from_numpy(rois), 3, 0.5, sampling_ratio, aligned)
    want = roipool.roi_align(x.numpy(), rois, 3, 0.5, sampling_ratio, aligned)
    np.testing.assert_array_equal(got.numpy(), want)
    g = torch.randn(got.shape, generator=torch.Generator().manual_seed(3))
    xg = x.clone().requires_grad_()
    roipool.roi_align(xg, torch.from_numpy(rois), 3, 0.5, sampling_ratio, aligned).backward(g)
    want_grad = roipool.roi_align_backward(g.numpy(), rois, x.shape, 3, 0.5, sampling_ratio, aligned)
    np.testing.assert_array_equal(xg.grad.numpy(), want_grad)


def test_double_backward():
    x = make_input((1, 2, 6, 7), torch.float64, "contiguous", seed=4).requires_grad_()
    rois = torch.from_numpy(make_rois(1, 6, 7, 1.0, k=5, seed=4))
    assert torch.autograd.gradgradcheck(lambda t: roipool.roi_align(t, rois, 2, 1.0, 2, True), (x,))


@pytest.mark.parametrize("opset, aligned", [(16, False), (15, False), (15, True)])
def test_onnx_export_at_older_opsets(opset, aligned):
    # before opset 16 ONNX's RoiAlign knows only the legacy rule: aligned=True is refused
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    layer = roipool.nn.RoIAlign((3, 3), 0.5, 2, aligned)
    x = make_input((2, 3, 9, 11), torch.float32, "contiguous")
    boxes = torch.from_numpy(make_rois(2, 9, 11, 0.5, k=7, seed=7)).float()
    buffer = io.BytesIO()
    if aligned:
        with pytest.raises(Exception, match="aligned=True needs ONNX opset 16"):
            torch.onnx.export(layer, (x, boxes), buffer, dynamo=False, opset_version=opset)
        return
    torch.onnx.export(layer, (x, boxes), buffer, dynamo=False, opset_version=opset, input_names=["input", "rois"])
    model = onnx.load_from_string(buffer.getvalue())
    assert "RoiAlign" in [node.op_type for node in model.graph.node]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"input": x.numpy(), "rois": boxes.numpy()})
    np.testing.assert_allclose(got, layer(x, boxes).numpy(), rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(sampling_ratio=1.5), TypeError, "sampling_ratio must be an int"),
        (dict(aligned=1), TypeError, "aligned must be a bool"),
        (dict(boxes=torch.tensor([[0, -1e38, 0, 3e38, 4]]), spatial_scale=4.0), ValueError, "overflows float32"),
    ],
)
def test_bad_arguments_through_torch(kwargs, error, words):
    args = dict(input=torch.zeros((1, 2, 5, 5)), boxes=torch.tensor([[0.0, 0, 0, 2, 2]]), output_size=2)
    args.update(kwargs)
    with pytest.raises(error, match=words):
        roipool.roi_align(**args)


# ---- MultiScaleRoIAlign ----


def pyramid(image_h=64, image_w=96, channels=3, seed=0):
    """Levels 2 to 5 (strides 4 to 32) of a 2-image batch, plus one map the layer must ignore."""
    g = torch.Generator().manual_seed(seed)
    x = OrderedDict()
    for k in (2, 3, 4, 5):
        x[f"p{k}"] = torch.randn((2, channels, image_h // 2**k, image_w // 2**k), generator=g, dtype=torch.float64)
    x["unused"] = torch.randn((2, channels, 3, 3), generator=g, dtype=torch.float64)
    return x


def test_multiscale_pools_each_box_from_the_level_its_size_selects():
    x = pyramid()
    # sides 8 .. 120 px: levels floor(4 + log2(side / 56)), clamped to [2, 5]
    sides = [8.0, 20.0, 28.0, 30.0, 56.0, 60.0, 111.0, 113.0, 120.0]
    boxes = [
        torch.tensor([[2.0, 3.0, 2.0 + s, 3.0 + s] for s in sides[:5]], dtype=torch.float64),
        torch.tensor([[1.0, 1.0, 1.0 + s, 1.0 + s] for s in sides[5:]], dtype=torch.float64),
    ]
    layer = roipool.nn.MultiScaleRoIAlign(["p2", "p3", "p4", "p5"], 3, 2, canonical_scale=56)
    got = layer(x, boxes, [(64, 96), (60, 90)])
    assert layer.scales == [1 / 4, 1 / 8, 1 / 16, 1 / 32]
    rois = np.concatenate([np.column_stack([np.full(len(b), i), b.numpy()]) for i, b in enumerate(boxes)])
    for k, side in enumerate(sides):
        level = min(max(math.floor(4 + math.log2(side / 56) + 1e-6), 2), 5)
        want = roipool.roi_align(x[f"p{level}"].numpy(), rois[k : k + 1], 3, 2.0**-level, 2, False)
        np.testing.assert_array_equal(got[k : k + 1].numpy(), want, err_msg=f"box of side {side}")


def test_multiscale_with_a_level_missing_leaves_its_boxes_zero_as_torchvision():
    # P2 and P4 only: k_min 2, k_max 4, so level 3's boxes go to the second map given (P4, at 1/16,
    # torchvision's indexing) and level 4's have no map and stay zero
    x = pyramid()
    sides = [20.0, 25.0, 40.0, 60.0, 120.0]  # levels 2, 2, 3, 4, 4 (clamped) with canonical_scale 56
    boxes = [torch.tensor([[2.0, 3.0, 2.0 + s, 3.0 + s] for s in sides], dtype=torch.float64), torch.zeros((0, 4))]
    rois = np.column_stack([np.zeros(len(sides)), boxes[0].numpy()])
    layer = roipool.nn.MultiScaleRoIAlign(["p2", "p4"], 3, 2, canonical_scale=56)
    for _ in range(3):  # freed memory full of NaN, which a result not zeroed would show
        torch.full((len(sides), x["p2"].shape[1], 3, 3), float("nan"), dtype=torch.float64)
        got = layer({"p2": x["p2"], "p4": x["p4"]}, boxes, [(64, 96), (64, 96)])
        assert layer.scales == [1 / 4, 1 / 16]
        np.testing.assert_array_equal(got[:2].numpy(), roipool.roi_align(x["p2"].numpy(), rois[:2], 3, 1 / 4, 2))
        np.testing.assert_array_equal(got[2:3].numpy(), roipool.roi_align(x["p4"].numpy(), rois[2:3], 3, 1 / 16, 2))
        assert (got[3:] == 0).all()


@pytest.mark.parametrize("names", [["p2", "p3", "p4", "p5"], ["p2", "p4"]], ids=["every-level", "a-level-missing"])
def test_multiscale_training_step_equals_level_by_level_writes_and_copies_no_gradient_of_the_results_size(names):
    # eager training calls put the levels' rows in place in one autograd step (nn._LevelRows);
    # the scripted layer writes level by level as torchvision does: the same values and gradients,
    # without the copy of the whole gradient that each write after the first costs in the backward
    from torch.utils._python_dispatch import TorchDispatchMode

    class Sizes(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor):
                    self.largest = max(self.largest, t.numel())
            return out

    x = pyramid(channels=4, seed=2)
    gen = torch.Generator().manual_seed(3)
    corners = torch.rand((2, 80, 2), generator=gen, dtype=torch.float64) * torch.tensor([90.0, 60.0])
    sides = torch.exp(torch.rand((2, 80, 2), generator=gen, dtype=torch.float64) * math.log(16)) * 5
    boxes = [torch.cat([c, c + s], 1) for c, s in zip(corners, sides)]  # sides 5 to 80 px: every level
    layer = roipool.nn.MultiScaleRoIAlign(names, 3, 2, canonical_scale=56)
    scripted = torch.jit.script(roipool.nn.MultiScaleRoIAlign(names, 3, 2, canonical_scale=56))
    results = []
    for pool in (layer, scripted):
        levels = {name: x[name].clone().requires_grad_() for name in names}
        leaf_boxes = [b.clone().requires_grad_() for b in boxes]
        out = pool(levels, leaf_boxes, [(64, 96), (64, 96)])
        upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(4), dtype=out.dtype)
        sizes = Sizes()
        with sizes:
            out.backward(upstream)
        results.append((out, [levels[n].grad for n in names], [b.grad for b in leaf_boxes], sizes.largest))
    (out, level_grads, box_grads, largest), (want, want_level_grads, want_box_grads, want_largest) = results
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    for got_grad, want_grad in zip(level_grads + box_grads, want_level_grads + want_box_grads):
        torch.testing.assert_close(got_grad, want_grad, rtol=0, atol=0)
    assert max(x[n].numel() for n in names) < out.numel() <= want_largest  # the scripted layer copies the gradient
    assert largest < out.numel()


def test_multiscale_training_step_has_a_second_derivative():
    x = pyramid(seed=5)
    levels = [x["p2"][:1, :2].clone().requires_grad_(), x["p3"][:1, :2].clone().requires_grad_()]
    boxes = [torch.tensor([[2.0, 3.0, 12.0, 11.0], [1.0, 0.0, 40.0, 30.0], [5.0, 4.0, 9.0, 20.0]], dtype=torch.float64)]
    layer = roipool.nn.MultiScaleRoIAlign(["p2", "p3"], 2, 2, canonical_scale=56)

    def pooled(p2, p3):
        return layer({"p2": p2, "p3": p3}, boxes, [(64, 96)])

    assert torch.autograd.gradcheck(pooled, levels)
    assert torch.autograd.gradgradcheck(pooled, levels)


def test_multiscale_with_one_level_is_roi_align_and_is_differentiable():
    x = pyramid(seed=1)
    x["p3"].requires_grad_()
    boxes = [
        torch.tensor([[0.0, 0, 30, 20]], dtype=torch.float64),
        torch.tensor([[5.0, 5, 60, 40]], dtype=torch.float64),
    ]
    layer = roipool.nn.MultiScaleRoIAlign(["p3"], (2, 3), -1)
    got = layer(x, boxes, [(64, 96)])
    torch.testing.assert_close(got, roipool.roi_align(x["p3"], boxes, (2, 3), 1 / 8, -1, False), rtol=0, atol=0)
    assert repr(layer) == "MultiScaleRoIAlign(featmap_names=['p3'], output_size=(2, 3), sampling_ratio=-1)"
    layer4 = roipool.nn.MultiScaleRoIAlign(["p2", "p3", "p4", "p5"], 2, 2)
    xs = {k: v.detach().requires_grad_() for k, v in x.items()}
    assert torch.autograd.gradcheck(
        lambda a, b: layer4({"p2": a, "p3": b, "p4": xs["p4"], "p5": xs["p5"]}, boxes, [(64, 96)]),
        (xs["p2"], xs["p3"]),
        fast_mode=True,
    )


def test_multiscale_needs_image_shapes():
    layer = roipool.nn.MultiScaleRoIAlign(["p2"], 2, 2)
    with pytest.raises(ValueError, match="image_shapes"):
        layer(pyramid(), [torch.zeros((0, 4)), torch.zeros((0, 4))], [])


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(featmap_names="p2p3"), TypeError, "featmap_names must be a list of names"),
        (dict(featmap_names=[]), ValueError, "featmap_names must be a non-empty list"),
        (dict(featmap_names=["p2", 3]), ValueError, "featmap_names must be a non-empty list"),
        (dict(canonical_scale=0), ValueError, "canonical_scale must be finite and positive"),
        (dict(canonical_level=float("nan")), TypeError, "canonical_level must be an int"),
        (dict(canonical_level="4"), TypeError, "canonical_level must be an int"),
        (dict(canonical_level=10**30), ValueError, "canonical_level must be a pyramid level"),
        (dict(output_size=0), ValueError, "output_size must be positive"),
        (dict(sampling_ratio=2.5), TypeError, "sampling_ratio must be an int"),
    ],
)
def test_multiscale_refuses_bad_arguments_when_built(kwargs, error, words):
    # bad-input fuzzing: "p2p3" matched names by substring; nan and -1 levels pooled zeros
    args = dict(featmap_names=["p2", "p3"], output_size=2, sampling_ratio=2) | kwargs
    with pytest.raises(error, match=words):
        roipool.nn.MultiScaleRoIAlign(**args)


def _two_images_boxes():
    return [torch.tensor([[0.0, 0, 30, 20], [4, 4, 60, 50]], dtype=torch.float64), torch.tensor([[5.0, 5, 60, 40]])]


@pytest.mark.parametrize(
    "change, error, words",
    [
        (lambda x, b, s: (list(x.values()), b, s), TypeError, "x must be a dict of feature maps"),
        (lambda x, b, s: ({"p2": x["p2"]}, b, s), ValueError, "x has no feature map named 'p3'"),
        (lambda x, b, s: (x | {"p3": x["p3"][:, :2]}, b, s), ValueError, r"x\['p3'\] has shape \(2, 2, 8, 12\)"),
        (lambda x, b, s: (x | {"p3": x["p3"][:, :, :0]}, b, s), ValueError, r"x\['p3'\] has no rows"),
        (lambda x, b, s: (x | {"p3": x["p3"][0]}, b, s), ValueError, r"x\['p3'\] must be a Tensor\[N, C, H, W\]"),
        (lambda x, b, s: (x, torch.cat(b), s), TypeError, "boxes must be a list of 2 Tensor"),
        (lambda x, b, s: (x, b[:1], s), ValueError, r"boxes must hold one Tensor\[L_i, 4\] per image \(2\), got 1"),
        (lambda x, b, s: (x, [t.numpy() for t in b], s), TypeError, r"boxes\[0\] must be a Tensor"),
        (lambda x, b, s: (x, b, None), ValueError, "image_shapes must be a list"),
        (lambda x, b, s: (x, b, [(3, 64, 96)] * 2), ValueError, "image_shapes must hold \\(height, width\\) pairs"),
        (lambda x, b, s: (x, b, [64, 96]), ValueError, "image_shapes must hold \\(height, width\\) pairs"),
        (lambda x, b, s: (x, b, [(0, 0)] * 2), ValueError, "pairs of positive sizes"),
        (lambda x, b, s: (x, b, [(1e300, 1e300)] * 2), ValueError, "pairs of positive sizes"),
        (lambda x, b, s: (x, b, [(64.5, 96)] * 2), ValueError, "pairs of positive sizes"),
        (
            lambda x, b, s: (x, b, [np.zeros((2, 2))] * 2),
            ValueError,
            "image_shapes must hold \\(height, width\\) pairs",
        ),
    ],
)
def test_multiscale_refuses_bad_calls_by_name(change, error, words):
    # bad-input fuzzing: these raised AttributeError, ZeroDivisionError, "math domain error",
    # cat()'s TypeError, or pooled from wrong scales without a word
    x = {k: v for k, v in pyramid().items() if k in ("p2", "p3")}
    layer = roipool.nn.MultiScaleRoIAlign(["p2", "p3"], 2, 2)
    with pytest.raises(error, match=words):
        layer(*change(x, _two_images_boxes(), [(64, 96)] * 2))
    assert layer.scales is None  # nothing was inferred from the bad call


def test_multiscale_takes_what_torchvision_takes():
    # what the first version of the checks refused (found by fuzzing them): image sizes as tensors,
    # arrays or whole floats, NumPy ints, a tuple of boxes, a padded batch whose finest level is
    # taller than the tallest image, a level finer than the image
    x = {k: v for k, v in pyramid().items() if k in ("p2", "p3")}
    want = roipool.nn.MultiScaleRoIAlign(["p2", "p3"], 2, 2)(x, _two_images_boxes(), [(64, 96)] * 2)
    for shapes in (
        [(torch.tensor(64), torch.tensor(96))] * 2,
        [np.array([64, 96])],
        [(64.0, 96.0)],
        [torch.Size((64, 96))],
    ):
        got = roipool.nn.MultiScaleRoIAlign(["p2", "p3"], 2, 2, canonical_level=np.int64(4))(
            x, tuple(_two_images_boxes()), shapes
        )
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    padded = roipool.nn.MultiScaleRoIAlign(["p2", "p3"], 2, 2)
    padded(x, _two_images_boxes(), [(60, 90), (56, 80)])  # x["p2"] has 16 rows: a stride of 4 with padding
    assert padded.scales == [1 / 4, 1 / 8]
    fine = roipool.nn.MultiScaleRoIAlign(["p2", "p3"], 2, 2)
    fine(x, _two_images_boxes(), [(8, 12)])  # levels finer than the image, as torchvision allows
    assert fine.scales == [2.0, 1.0]


def test_multiscale_refuses_a_box_that_is_not_finite_and_an_output_too_large():
    x = pyramid()
    layer = roipool.nn.MultiScaleRoIAlign(["p2", "p3"], 2, 2)
    boxes = _two_images_boxes()
    boxes[1][0, 2] = float("nan")  # box 2 of all: it was given no level and pooled as zeros
    with pytest.raises(ValueError, match=r"boxes: box 2 has a coordinate that is NaN or infinite: \[5.0, 5.0, nan"):
        layer(x, boxes, [(64, 96)])
    # compiled graphs cannot read the values first: the NaN box goes to the finest level, whose op refuses it
    levels = roipool.nn.box_levels(boxes, (2, 3), 224, 4)
    assert levels.tolist() == [0, 0, 0]
    meta = {k: v.to("meta") for k, v in x.items()}  # a meta call cannot read values: not checked
    with pytest.raises(NotImplementedError):  # torch.where has no meta kernel for the level split
        layer(meta, [b.to("meta") for b in _two_images_boxes()], [(64, 96)])
    huge = roipool.nn.MultiScaleRoIAlign(["p2", "p3"], (1, 10**9), 2)
    with pytest.raises(ValueError, match=r"output_size=\(1, 1000000000\) asks for the output"):
        huge(x, _two_images_boxes(), [(64, 96)])
