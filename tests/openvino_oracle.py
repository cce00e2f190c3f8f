"""OpenVINO's ROIAlignRotated (opset 15, CPU plugin) as an independent oracle for roi_align_rotated.

OpenVINO's op is mmcv's ``roi_align_rotated`` with ``aligned=True`` fixed (the
centre is shifted by half a cell), angles in radians, ``clockwise_mode`` the
same flag as ``clockwise``, and ``sampling_ratio=0`` for adaptive sampling.
It takes ``rois (K, 5)`` of ``[cx, cy, w, h, angle]`` and a separate
``batch_indices (K,)`` input. float32 only here.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

ov = pytest.importorskip("openvino")


@functools.lru_cache(maxsize=None)
def compiled(pooled_h, pooled_w, spatial_scale, sampling_ratio, clockwise, threads=1):
    """A compiled CPU model for these attributes (dynamic shapes: any map, any number of RoIs)."""
    from openvino import opset15 as ops

    data = ops.parameter([-1, -1, -1, -1], np.float32, name="data")
    rois = ops.parameter([-1, 5], np.float32, name="rois")
    batch = ops.parameter([-1], np.int32, name="batch")
    node = ops.roi_align_rotated(
        data, rois, batch, pooled_h, pooled_w, max(sampling_ratio, 0), float(spatial_scale), bool(clockwise)
    )
    model = ov.Model([node], [data, rois, batch], "roi_align_rotated")
    config = {"INFERENCE_NUM_THREADS": int(threads), "INFERENCE_PRECISION_HINT": "f32"}
    return ov.Core().compile_model(model, "CPU", config)


def roi_align_rotated(x, rois, pooled_h, pooled_w, spatial_scale, sampling_ratio, clockwise, threads=1):
    """OpenVINO's ROIAlignRotated on ``rois (K, 6)`` rows ``[n, cx, cy, w, h, angle]`` (roipool's format)."""
    model = compiled(
        pooled_h, pooled_w, float(np.float32(spatial_scale)), int(sampling_ratio), bool(clockwise), threads
    )
    rois = np.asarray(rois, np.float32)
    feeds = [np.ascontiguousarray(x, np.float32), np.ascontiguousarray(rois[:, 1:]), rois[:, 0].astype(np.int32)]
    return model(feeds)[0]
