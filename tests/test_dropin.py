"""roipool's layers as drop-ins for torchvision's beyond eager calls: fx, TorchScript, compile, quantized.

The per-op rows (fx leaves, scripting) are in the shared tester (``roi_family.py``);
this file covers ``MultiScaleRoIAlign`` in a small detector-like model, the
quantized ``roi_align`` and, where torchvision is installed, its feature
extraction tracer.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import List

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import roipool  # noqa: E402
import roipool.nn  # noqa: E402
from roipool import reference  # noqa: E402


class TinyDetector(torch.nn.Module):
    """Two pyramid levels, a MultiScaleRoIAlign pooler and a linear head: the shape of a two-stage detector."""

    def __init__(self):
        super().__init__()
        self.level2 = torch.nn.Conv2d(3, 4, 3, stride=4, padding=1)
        self.level3 = torch.nn.Conv2d(4, 4, 3, stride=2, padding=1)
        self.pooler = roipool.nn.MultiScaleRoIAlign(["p2", "p3"], 3, 2, canonical_scale=56)
        self.head = torch.nn.Linear(36, 2)

    def forward(self, images, boxes: List[torch.Tensor]):
        p2 = self.level2(images)
        features = OrderedDict([("p2", p2), ("p3", self.level3(p2))])
        image_shapes = [(images.shape[-2], images.shape[-1])] * images.shape[0]
        return self.head(self.pooler(features, boxes, image_shapes).flatten(1))


IMAGES = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
BOXES = [
    [torch.tensor([[1.0, 1, 90, 90], [0, 0, 10, 10], [5, 5, 30, 40]]), torch.tensor([[2.0, 3, 120, 100]])],
    [torch.tensor([[1.0, 1, 50, 90], [0, 0, 100, 100]]), torch.tensor([[2.0, 3, 12, 10], [3, 3, 60, 60]])],
]


def test_boxes_fall_on_both_levels():
    levels = roipool.nn.box_levels(BOXES[0], (2, 3), 56, 4)
    assert set(levels.tolist()) == {0, 1}


def test_fx_traces_multiscale_roi_align_as_a_leaf_module():
    model = TinyDetector().eval()
    traced = torch.fx.symbolic_trace(model)
    calls = [n.target for n in traced.graph.nodes if n.op == "call_module"]
    assert calls == ["level2", "level3", "pooler", "head"]
    with torch.no_grad():
        for boxes in BOXES:
            torch.testing.assert_close(traced(IMAGES, boxes), model(IMAGES, boxes), rtol=0, atol=0)


def test_jit_script_of_a_detector_with_multiscale_roi_align_equals_eager():
    model = TinyDetector().eval()
    scripted = torch.jit.script(TinyDetector().eval())
    scripted.load_state_dict(model.state_dict())
    with torch.no_grad():
        for boxes in BOXES:
            torch.testing.assert_close(scripted(IMAGES, boxes), model(IMAGES, boxes), rtol=0, atol=0)


def test_compile_fullgraph_of_the_detector_is_one_graph_and_does_not_recompile_per_level():
    from torch._dynamo.utils import counters

    model = TinyDetector().eval()
    with torch.no_grad():
        model(IMAGES, BOXES[0])  # the first call sets the scales; compiling before it costs one recompilation
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        for boxes in (BOXES[0], BOXES[0]):
            torch.testing.assert_close(compiled(IMAGES, boxes), model(IMAGES, boxes), rtol=0, atol=0)
        assert counters["stats"]["unique_graphs"] == 1
        # other boxes: at most the usual one recompilation that makes the box counts dynamic
        torch.testing.assert_close(compiled(IMAGES, BOXES[1]), model(IMAGES, BOXES[1]), rtol=0, atol=0)
        assert counters["stats"]["unique_graphs"] <= 2


def test_compile_fullgraph_of_a_training_step_equals_eager():
    # boxes on both levels (test_boxes_fall_on_both_levels): the compiled graph puts the levels' rows
    # in place in one autograd step, as the eager call does (nn._LevelRows)
    from torch._dynamo.utils import counters

    model = TinyDetector()
    model(IMAGES, BOXES[0])  # the first call sets the scales
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    for boxes in BOXES:
        outputs, grads = [], []
        for call in (compiled, model):
            model.zero_grad(set_to_none=True)
            out = call(IMAGES, boxes)
            out.square().sum().backward()
            outputs.append(out)
            grads.append([p.grad for p in model.parameters()])
        torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)
        for got, want in zip(*grads):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert counters["stats"]["unique_graphs"] <= 2


def test_multiscale_scales_are_plain_python_numbers():
    layer = roipool.nn.MultiScaleRoIAlign(["a", "b", "c"], 2, 2)
    features = [torch.zeros(1, 1, 200, 304), torch.zeros(1, 1, 100, 152), torch.zeros(1, 1, 50, 76)]
    scales, level_range = roipool.nn.infer_scales(features, [(800, 1216)])
    assert scales == [0.25, 0.125, 0.0625] and level_range == (2, 4)
    assert all(type(s) is float for s in scales) and layer.scales is None


# ---- quantized roi_align ----


def quantize(values, scale, zero_point, dtype):
    """torch.quantize_per_tensor's rule written out: round half to even, shift, clamp to the dtype's range."""
    info = {torch.quint8: (0, 255), torch.qint8: (-128, 127), torch.qint32: (-(2**31), 2**31 - 1)}[dtype]
    return np.clip(np.round(values / scale) + zero_point, *info).astype(np.int64)


@pytest.mark.parametrize("dtype", [torch.quint8, torch.qint8, torch.qint32])
@pytest.mark.parametrize("aligned", [False, True])
def test_quantized_roi_align_is_dequantize_pool_quantize(dtype, aligned):
    g = torch.Generator().manual_seed(1)
    zero_point = 0 if dtype == torch.qint32 else 5
    x = torch.quantize_per_tensor(torch.rand(1, 3, 10, 12, generator=g) * 4, 0.03, zero_point, dtype)
    rois = torch.quantize_per_tensor(
        torch.tensor([[0, 1.0, 1, 8, 7], [0, 0.5, 2, 11, 9], [0, 3, 3, 3.5, 4], [0, -3, -2, 30, 25]]), 0.25, 0, dtype
    )
    got = roipool.roi_align(x, rois, (3, 2), 0.5, 2, aligned)
    assert got.dtype == dtype and got.q_scale() == x.q_scale() and got.q_zero_point() == x.q_zero_point()
    r = rois.dequantize().double().numpy()
    pooled = reference.roi_align(x.dequantize().double().numpy(), r, 3, 2, 0.5, 2, aligned)
    expected = quantize(pooled, x.q_scale(), x.q_zero_point(), dtype)
    assert np.abs(got.int_repr().numpy().astype(np.int64) - expected).max() <= 1
    layer = roipool.nn.RoIAlign((3, 2), 0.5, 2, aligned)
    assert torch.equal(layer(x, [rois[:, 1:]]).int_repr(), got.int_repr())  # one image's (L, 4) boxes
    assert torch.equal(torch.jit.script(layer)(x, rois).int_repr(), got.int_repr())


def test_quantized_roi_align_follows_torchvision_argument_rules():
    x = torch.quantize_per_tensor(torch.rand(2, 3, 6, 6), 0.1, 0, torch.quint8)
    rois = torch.quantize_per_tensor(torch.tensor([[0, 0, 0, 4, 4.0]]), 1.0, 0, torch.quint8)
    with pytest.raises(ValueError, match="one image"):
        roipool.roi_align(x, rois, 2)
    with pytest.raises(TypeError, match="quantized with the input's dtype"):
        roipool.roi_align(x[:1], rois.dequantize(), 2)
    qint8_rois = torch.quantize_per_tensor(torch.tensor([[0, 0, 0, 4, 4.0]]), 1.0, 0, torch.qint8)
    with pytest.raises(TypeError, match="quantized with the input's dtype"):
        roipool.roi_align(x[:1], qint8_rois, 2)


# ---- torchvision's tracer (skipped where torchvision is not installed) ----


def test_torchvision_feature_extraction_sees_the_layers_as_leaves():
    feature_extraction = pytest.importorskip("torchvision.models.feature_extraction")
    model = TinyDetector().eval()
    train_names, eval_names = feature_extraction.get_graph_node_names(model)
    assert "pooler" in eval_names and not any(name.startswith("pooler.") for name in eval_names)
    extractor = feature_extraction.create_feature_extractor(model, {"pooler": "pooled", "head": "out"})
    with torch.no_grad():
        got = extractor(IMAGES, BOXES[0])
        torch.testing.assert_close(got["out"], model(IMAGES, BOXES[0]), rtol=0, atol=0)
    assert got["pooled"].shape == (4, 4, 3, 3)


@pytest.mark.parametrize("name", ["fasterrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn"])
def test_torchvision_detectors_with_roipool_poolers_script_to_the_eager_result(name):
    detection = pytest.importorskip("torchvision.models.detection")
    torch.manual_seed(0)
    model = getattr(detection, name)(weights=None, weights_backbone=None, min_size=160, max_size=160).eval()
    model.roi_heads.box_score_thresh = 0.0
    model.roi_heads.box_roi_pool = roipool.nn.MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
    if getattr(model.roi_heads, "mask_roi_pool", None) is not None:
        model.roi_heads.mask_roi_pool = roipool.nn.MultiScaleRoIAlign(["0", "1", "2", "3"], 14, 2)
    images = [torch.rand(3, 160, 160, generator=torch.Generator().manual_seed(2))]
    with torch.no_grad():
        expected = model(images)[0]
        _, got = torch.jit.script(model)(images)
    assert len(expected["boxes"]) > 0
    for key in expected:
        torch.testing.assert_close(got[0][key], expected[key], rtol=0, atol=0)
