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


# ---- RoiAlign ----


@functools.lru_cache(maxsize=None)
def _roi_align(pooled_h, pooled_w, spatial_scale, sampling_ratio, aligned):
    node = helper.make_node(
        "RoiAlign",
        ["X", "R", "B"],
        ["Y"],
        output_height=pooled_h,
        output_width=pooled_w,
        spatial_scale=spatial_scale,
        sampling_ratio=max(sampling_ratio, 0),  # 0 is adaptive in ONNX
        mode="avg",
        # half_pixel shifts by half a cell (torchvision's aligned=True);
        # output_half_pixel is the legacy rule (aligned=False)
        coordinate_transformation_mode="half_pixel" if aligned else "output_half_pixel",
    )
    return _session(node, [("X", TensorProto.FLOAT), ("R", TensorProto.FLOAT), ("B", TensorProto.INT64)])


def roi_align(x, rois, pooled_h, pooled_w, spatial_scale, sampling_ratio, aligned):
    """ONNX Runtime's RoiAlign (opset 16, mode 'avg', float32 only); ``rois (K, 5)`` as roipool takes them."""
    sess = _roi_align(pooled_h, pooled_w, float(np.float32(spatial_scale)), int(sampling_ratio), bool(aligned))
    rois = np.asarray(rois, np.float32)
    feeds = {
        "X": np.ascontiguousarray(x, np.float32),
        "R": np.ascontiguousarray(rois[:, 1:]),
        "B": rois[:, 0].astype(np.int64),
    }
    return sess.run(None, feeds)[0]
