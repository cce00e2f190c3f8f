"""ONNX Runtime as an independent oracle: MaxRoiPool and RoiAlign sessions."""

from __future__ import annotations

import functools

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402


def _session(node, inputs):
    graph = helper.make_graph(
        [node],
        "oracle",
        [helper.make_tensor_value_info(name, dtype, None) for name, dtype in inputs],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 16)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


@functools.lru_cache(maxsize=None)
def _max_roi_pool(pooled_h, pooled_w, spatial_scale):
    node = helper.make_node(
        "MaxRoiPool", ["X", "R"], ["Y"], pooled_shape=[pooled_h, pooled_w], spatial_scale=spatial_scale
    )
    return _session(node, [("X", TensorProto.FLOAT), ("R", TensorProto.FLOAT)])


def max_roi_pool(x, rois, pooled_h, pooled_w, spatial_scale):
    """ONNX Runtime's MaxRoiPool (float32 only)."""
    sess = _max_roi_pool(pooled_h, pooled_w, float(np.float32(spatial_scale)))
    return sess.run(None, {"X": np.ascontiguousarray(x, np.float32), "R": np.ascontiguousarray(rois, np.float32)})[0]
