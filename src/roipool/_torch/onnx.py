"""ONNX exporters of the RoI family: the standard ONNX node each op becomes, for both torch exporters.

The TorchScript exporter (``torch.onnx.export(..., dynamo=False)``) maps the
custom ops through the symbolics registered here; the dynamo exporter either
gets the node straight from the public function (``*_node`` below, emitted
while :func:`dynamo_onnx_export` is true) or, for a model that calls the
registered op itself, the onnxscript translations collected by
:func:`onnx_translation_table`. ``MaxRoiPool`` has no argmax output;
``RoiAlign``'s ``coordinate_transformation_mode`` carries ``aligned``.
PS-RoI pooling has no ONNX op and is not exported.
"""

from __future__ import annotations

import torch

from ._library import dynamo_onnx_export, onnx_translation_table, register_onnx

__all__ = ["dynamo_onnx_export", "onnx_translation_table", "max_roi_pool_node", "roi_align_node"]


def max_roi_pool_node(input, rois, spatial_scale, pooled_h, pooled_w):
    """The ONNX ``MaxRoiPool`` node of :func:`roi_pool`, for the dynamo exporter."""
    return torch.onnx.ops.symbolic(
        "MaxRoiPool",
        (input, rois.to(input.dtype)),
        {"pooled_shape": [pooled_h, pooled_w], "spatial_scale": float(spatial_scale)},
        dtype=input.dtype,
        shape=(rois.shape[0], input.shape[1], pooled_h, pooled_w),
    )


def roi_align_node(input, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned):
    """The ONNX ``RoiAlign`` node of :func:`roi_align`, for the dynamo exporter."""
    return torch.onnx.ops.symbolic(
        "RoiAlign",
        (input, rois[:, 1:].to(input.dtype), rois[:, 0].to(torch.int64)),
        {
            "output_height": pooled_h,
            "output_width": pooled_w,
            "spatial_scale": float(spatial_scale),
            "sampling_ratio": max(sampling_ratio, 0),
            "mode": "avg",
            "coordinate_transformation_mode": "half_pixel" if aligned else "output_half_pixel",
        },
        dtype=input.dtype,
        shape=(rois.shape[0], input.shape[1], pooled_h, pooled_w),
    )


# ---- roi_pool ----


def _roi_pool_symbolic(g, input, rois, spatial_scale, pooled_height, pooled_width):
    from torch.onnx.symbolic_helper import _get_const

    scale = _get_const(spatial_scale, "f", "spatial_scale")
    ph = _get_const(pooled_height, "i", "pooled_height")
    pw = _get_const(pooled_width, "i", "pooled_width")
    if rois.type().scalarType() != input.type().scalarType():
        rois = g.op("CastLike", rois, input)
    return g.op("MaxRoiPool", input, rois, pooled_shape_i=[ph, pw], spatial_scale_f=scale)


def _roi_pool_with_argmax_symbolic(g, *args):
    # ONNX's MaxRoiPool has no argmax output; only the pooled values are exported.
    return _roi_pool_symbolic(g, *args), None


def _roi_pool_translation():
    from onnxscript import opset18 as op

    def roi_pool(input, rois, spatial_scale: float, pooled_height: int, pooled_width: int):
        return op.MaxRoiPool(
            input, op.CastLike(rois, input), pooled_shape=[pooled_height, pooled_width], spatial_scale=spatial_scale
        )

    return roi_pool


def _roi_pool_with_argmax_translation():
    from onnx import TensorProto, helper
    from onnxscript import opset18 as op

    minus_one = helper.make_tensor("minus_one", TensorProto.INT32, [1], [-1])

    def roi_pool_with_argmax(input, rois, spatial_scale: float, pooled_height: int, pooled_width: int):
        output = op.MaxRoiPool(
            input, op.CastLike(rois, input), pooled_shape=[pooled_height, pooled_width], spatial_scale=spatial_scale
        )
        # MaxRoiPool has no argmax output and an exported model never runs the
        # backward, so nothing reads this placeholder and the exporter drops it.
        return output, op.ConstantOfShape(op.Shape(output), value=minus_one)

    return roi_pool_with_argmax


register_onnx("roi_pool", symbolic=_roi_pool_symbolic, translation=_roi_pool_translation)
register_onnx(
    "roi_pool_with_argmax", symbolic=_roi_pool_with_argmax_symbolic, translation=_roi_pool_with_argmax_translation
)


# ---- roi_align ----


def _roi_align_symbolic(g, input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned):
    from torch.onnx import symbolic_helper

    scale = symbolic_helper._get_const(spatial_scale, "f", "spatial_scale")
    ph = symbolic_helper._get_const(pooled_height, "i", "pooled_height")
    pw = symbolic_helper._get_const(pooled_width, "i", "pooled_width")
    ratio = symbolic_helper._get_const(sampling_ratio, "i", "sampling_ratio")
    aligned = bool(symbolic_helper._get_const(aligned, "b", "aligned"))
    batch = g.op("Gather", rois, g.op("Constant", value_t=torch.tensor(0, dtype=torch.int64)), axis_i=1)
    batch = g.op("Cast", batch, to_i=7)  # INT64
    boxes = g.op("Gather", rois, g.op("Constant", value_t=torch.tensor([1, 2, 3, 4], dtype=torch.int64)), axis_i=1)
    boxes = g.op("CastLike", boxes, input)
    attrs = dict(
        output_height_i=ph, output_width_i=pw, spatial_scale_f=scale, sampling_ratio_i=max(ratio, 0), mode_s="avg"
    )
    opset = g.opset  # the GraphContext's opset (symbolic_helper.GLOBALS is not exported by torch 2.11)
    if opset >= 16:
        attrs["coordinate_transformation_mode_s"] = "half_pixel" if aligned else "output_half_pixel"
    elif aligned:
        # Before opset 16 RoiAlign knows only the legacy rule. Shifting the boxes
        # by half a cell would still differ on boxes under one cell (the legacy
        # rule stretches them), so refuse rather than export a different op.
        raise ValueError(
            f"roi_align with aligned=True needs ONNX opset 16 or later to export exactly, got opset {opset}"
        )
    return g.op("RoiAlign", input, boxes, batch, **attrs)


def _roi_align_translation():
    from onnxscript import opset18 as op

    def roi_align(
        input, rois, spatial_scale: float, pooled_height: int, pooled_width: int, sampling_ratio: int, aligned: bool
    ):
        batch = op.Cast(op.Gather(rois, op.Constant(value_int=0), axis=1), to=7)  # INT64
        boxes = op.CastLike(op.Gather(rois, op.Constant(value_ints=[1, 2, 3, 4]), axis=1), input)
        mode = "half_pixel" if aligned else "output_half_pixel"
        return op.RoiAlign(
            input,
            boxes,
            batch,
            output_height=pooled_height,
            output_width=pooled_width,
            spatial_scale=spatial_scale,
            sampling_ratio=sampling_ratio if sampling_ratio > 0 else 0,
            mode="avg",
            coordinate_transformation_mode=mode,
        )

    return roi_align


register_onnx("roi_align", symbolic=_roi_align_symbolic, translation=_roi_align_translation)
