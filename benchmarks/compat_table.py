# ruff: noqa: B023  (each lambda is called at once, inside its loop iteration)
"""Measures the PyTorch compatibility table of docs/pytorch.md for roipool's layers or torchvision's.

Usage: python benchmarks/compat_table.py roipool|torchvision   (torchvision: from a peer venv)
Prints one line per (feature, layer): ok, or the first line of the error.
"""

import io
import sys
import warnings
from collections import OrderedDict
from typing import List

import torch

warnings.filterwarnings("ignore")
lib = sys.argv[1]
if lib == "roipool":
    import roipool.nn as ops
else:
    import torchvision.ops as ops

x = torch.rand(1, 8, 16, 16)
rois = torch.tensor([[0, 1.0, 1, 12, 10], [0, 0, 2, 7, 15]])
LAYERS = {
    "RoIPool": lambda: ops.RoIPool(2, 0.5),
    "RoIAlign": lambda: ops.RoIAlign(2, 0.5, 2),
    "PSRoIPool": lambda: ops.PSRoIPool(2, 0.5),
    "PSRoIAlign": lambda: ops.PSRoIAlign(2, 0.5, 2),
}


class Holder(torch.nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x, rois):
        return self.layer(x, rois)


class Detector(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, stride=4, padding=1)
        self.conv2 = torch.nn.Conv2d(4, 4, 3, stride=2, padding=1)
        self.pooler = ops.MultiScaleRoIAlign(["p2", "p3"], 3, 2)

    def forward(self, images, boxes: List[torch.Tensor]):
        p2 = self.conv(images)
        feats = OrderedDict([("p2", p2), ("p3", self.conv2(p2))])
        return self.pooler(feats, boxes, [(128, 128)])


images = torch.randn(1, 3, 128, 128)
boxes = [torch.tensor([[1.0, 1, 90, 90], [0, 0, 10, 10], [5, 5, 30, 40]])]


def check(name, fn):
    try:
        print(f"{name}: {fn()}")
    except Exception as exc:  # noqa: BLE001
        print(f"{name}: FAIL {type(exc).__name__}: {str(exc).strip().splitlines()[0][:150]}")


def same(a, b):
    return "ok" if torch.equal(a, b) else "DIFFERENT"


for lname, make in LAYERS.items():
    m = Holder(make()).eval()
    e = m(x, rois)
    check(f"{lname} compile fullgraph", lambda: same(torch.compile(m, fullgraph=True, backend="aot_eager")(x, rois), e))
    check(f"{lname} export", lambda: same(torch.export.export(m, (x, rois)).module()(x, rois), e))
    check(f"{lname} jit.trace", lambda: same(torch.jit.trace(m, (x, rois))(x, rois), e))
    check(f"{lname} jit.script", lambda: same(torch.jit.script(m)(x, rois), e))
    check(f"{lname} fx", lambda: same(torch.fx.symbolic_trace(m)(x, rois), e))

    def fe():
        from torchvision.models.feature_extraction import get_graph_node_names

        return str(get_graph_node_names(m)[1])

    check(f"{lname} feature_extraction", fe)

    def quant():
        qx = torch.quantize_per_tensor(x, 0.01, 0, torch.quint8)
        qr = torch.quantize_per_tensor(rois, 0.25, 0, torch.quint8)
        return f"ok {m(qx, qr).dtype}"

    check(f"{lname} quantized", quant)

    def onnx():
        f = io.BytesIO()
        torch.onnx.export(m, (x, rois), f, dynamo=False, opset_version=17)
        return f"ok {len(f.getvalue())} bytes"

    check(f"{lname} onnx (TorchScript exporter)", onnx)

d = Detector().eval()
with torch.no_grad():
    e = d(images, boxes)
    ex = torch._dynamo.explain(d)(images, boxes)
    print(f"MultiScaleRoIAlign explain: graphs {ex.graph_count}, graph breaks {ex.graph_break_count}")
    for r in ex.break_reasons:
        print(
            "   break:",
            r.reason.strip().splitlines()[0][:120],
            [f"{f.filename.split('/')[-1]}:{f.lineno}" for f in r.user_stack[-1:]],
        )
    torch._dynamo.reset()
    check(
        "MultiScaleRoIAlign compile fullgraph",
        lambda: same(torch.compile(d, fullgraph=True, backend="aot_eager")(images, boxes), e),
    )
    check("MultiScaleRoIAlign jit.script", lambda: same(torch.jit.script(d)(images, boxes), e))
    check("MultiScaleRoIAlign fx", lambda: same(torch.fx.symbolic_trace(d)(images, boxes), e))

    def fe2():
        from torchvision.models.feature_extraction import get_graph_node_names

        return str(get_graph_node_names(d)[1])

    check("MultiScaleRoIAlign feature_extraction", fe2)
    check("MultiScaleRoIAlign export", lambda: same(torch.export.export(d, (images, boxes)).module()(images, boxes), e))
