"""roipool's torch-only functions: TorchScript-compatible, FX leaves, one per op.

``roipool.roi_align`` and friends dispatch on the array type (NumPy or torch),
which ``torch.jit.script`` cannot compile. The functions here take tensors only
and have TorchScript signatures (torchvision's); ``roipool.nn``'s layers call
them, so scripting a model that holds the layers works, and so does
``torch.jit.script(roipool.torch.roi_align)``.

- Eager (and under ``torch.compile``/``torch.export``): each function runs the
  op's frontend in ``_torch/<op>.py`` (every check, ONNX export, the training
  route), exactly as ``roipool.<op>`` on a tensor does.
- Under ``torch.fx`` tracing: the call becomes one ``call_function`` node of
  this function (``_torch/_tracing.py``).
- Scripted: the boxes are assembled into ``(K, 5)`` rois and the registered op
  ``torch.ops.roipool.<op>`` runs; the kernels check the boxes' values, and the
  static checks below raise ``ValueError``/``TypeError`` with the same meaning
  (a shorter message than eager's). The results are the eager ones, bit for bit.

A new op adds a function here of the same shape: TorchScript annotations, the
``if not torch.jit.is_scripting(): return _eager(<this function>, <frontend>, ...)``
line, then the scripted body calling ``torch.ops.roipool.<op>``.
"""

import sys
from typing import List, Tuple, Union

import torch
from torch import Tensor
from torch.jit.annotations import BroadcastingList2

from . import _checks
from ._torch import prroi_pool as _prroi_pool
from ._torch import ps_roi as _ps_roi
from ._torch import roi_align as _roi_align
from ._torch import roi_align_rotated as _rotated
from ._torch import roi_pool as _roi_pool
from ._torch._tracing import fx_function_call
from ._torch.quantized import roi_align_quantized

__all__ = ["roi_pool", "roi_align", "ps_roi_pool", "ps_roi_align", "roi_align_rotated", "prroi_pool"]


def _eager(public, frontend, *args):
    """``frontend(*args)``, or the FX node ``public(*args)`` while ``torch.fx`` traces the call."""
    node = fx_function_call(public, *args)
    if node is not None:
        return node
    return frontend(*args)


def _feature_map(input: Tensor) -> None:
    if input.dim() != 4:
        raise ValueError("input must have shape (N, C, H, W)")
    dt = input.dtype
    if not (dt == torch.float32 or dt == torch.float64 or dt == torch.float16 or dt == torch.bfloat16):
        raise TypeError("input must be float16, bfloat16, float32 or float64")


def _pooled(output_size: List[int], spatial_scale: float) -> Tuple[int, int]:
    if len(output_size) != 2 or output_size[0] <= 0 or output_size[1] <= 0:
        raise ValueError("output_size must be a positive int or a pair of positive ints")
    if not (spatial_scale > 0.0 and spatial_scale < float("inf")):
        raise ValueError("spatial_scale must be finite and positive")
    return output_size[0], output_size[1]


def rois_tensor(input: Tensor, boxes: Union[Tensor, List[Tensor]], coords: int = 4) -> Tensor:
    """``(K, 5)`` rois from a ``(K, 5)`` tensor or one ``(L_i, 4)`` tensor per image (``boxes_to_rois``)."""
    if isinstance(boxes, list):
        if len(boxes) != input.size(0):
            raise ValueError("boxes must hold one tensor per image of input")
        dtype = input.dtype
        if dtype == torch.float16 or dtype == torch.bfloat16:
            dtype = torch.float32
        parts: List[Tensor] = []
        for i, b in enumerate(boxes):
            if b.dim() != 2 or b.size(1) != coords:
                raise ValueError("boxes[i] must have shape (L, 4), or (L, 5) for rotated boxes")
            index = torch.full((b.size(0), 1), float(i), dtype=dtype, device=input.device)
            parts.append(torch.cat([index, b.to(dtype)], dim=1))
        if len(parts) == 0:
            return torch.empty((0, coords + 1), dtype=dtype, device=input.device)
        return torch.cat(parts, dim=0)
    if boxes.dim() != 2 or boxes.size(1) != coords + 1:
        raise ValueError("boxes must have shape (K, 5), or (K, 6) for rotated boxes")
    return boxes


def roi_pool(
    input: Tensor, boxes: Union[Tensor, List[Tensor]], output_size: BroadcastingList2[int], spatial_scale: float = 1.0
) -> Tensor:
    """RoI max pooling; see :func:`roipool.roi_pool`. ``Tensor[K, C, pooled_h, pooled_w]``."""
    if not torch.jit.is_scripting():
        return _eager(roi_pool, _roi_pool.roi_pool, input, boxes, output_size, spatial_scale)
    _feature_map(input)
    pooled_h, pooled_w = _pooled(output_size, spatial_scale)
    rois = rois_tensor(input, boxes)
    if input.device.type != "cpu" and input.requires_grad and torch.is_grad_enabled():
        return torch.ops.roipool.roi_pool_with_argmax(input, rois, spatial_scale, pooled_h, pooled_w)[0]
    return torch.ops.roipool.roi_pool(input, rois, spatial_scale, pooled_h, pooled_w)


def roi_align(
    input: Tensor,
    boxes: Union[Tensor, List[Tensor]],
    output_size: BroadcastingList2[int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """RoIAlign; see :func:`roipool.roi_align`. ``Tensor[K, C, pooled_h, pooled_w]``."""
    if not torch.jit.is_scripting():
        if isinstance(input, Tensor) and input.is_quantized:
            pooled_h, pooled_w, scale, ratio, aligned = _checks.roi_align_arguments(
                output_size, spatial_scale, sampling_ratio, aligned
            )
            return roi_align_quantized(input, boxes, pooled_h, pooled_w, scale, ratio, aligned)
        return _eager(
            roi_align, _roi_align.roi_align, input, boxes, output_size, spatial_scale, sampling_ratio, aligned
        )
    pooled_h, pooled_w = _pooled(output_size, spatial_scale)
    if input.is_quantized:
        return roi_align_quantized(input, boxes, pooled_h, pooled_w, spatial_scale, sampling_ratio, aligned)
    _feature_map(input)
    rois = rois_tensor(input, boxes)
    return torch.ops.roipool.roi_align(input, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned)


def _ps_channels(input: Tensor, pooled_h: int, pooled_w: int) -> None:
    if input.size(1) % (pooled_h * pooled_w) != 0:
        raise ValueError("input's channels must be a multiple of pooled_h * pooled_w")


def ps_roi_pool(
    input: Tensor, boxes: Union[Tensor, List[Tensor]], output_size: BroadcastingList2[int], spatial_scale: float = 1.0
) -> Tensor:
    """Position-sensitive RoI average pooling; see :func:`roipool.ps_roi_pool`."""
    if not torch.jit.is_scripting():
        return _eager(ps_roi_pool, _ps_roi.ps_roi_pool, input, boxes, output_size, spatial_scale)
    _feature_map(input)
    pooled_h, pooled_w = _pooled(output_size, spatial_scale)
    _ps_channels(input, pooled_h, pooled_w)
    rois = rois_tensor(input, boxes)
    return torch.ops.roipool.ps_roi_pool(input, rois, spatial_scale, pooled_h, pooled_w)


def ps_roi_align(
    input: Tensor,
    boxes: Union[Tensor, List[Tensor]],
    output_size: BroadcastingList2[int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
) -> Tensor:
    """Position-sensitive RoIAlign; see :func:`roipool.ps_roi_align`."""
    if not torch.jit.is_scripting():
        return _eager(ps_roi_align, _ps_roi.ps_roi_align, input, boxes, output_size, spatial_scale, sampling_ratio)
    _feature_map(input)
    pooled_h, pooled_w = _pooled(output_size, spatial_scale)
    _ps_channels(input, pooled_h, pooled_w)
    rois = rois_tensor(input, boxes)
    return torch.ops.roipool.ps_roi_align(input, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio)


def roi_align_rotated(
    input: Tensor,
    boxes: Union[Tensor, List[Tensor]],
    output_size: BroadcastingList2[int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = True,
    clockwise: bool = False,
) -> Tensor:
    """Rotated RoIAlign; see :func:`roipool.roi_align_rotated`. Rows ``[batch_index, cx, cy, w, h, angle]``."""
    if not torch.jit.is_scripting():
        return _eager(
            roi_align_rotated,
            _rotated.roi_align_rotated,
            input,
            boxes,
            output_size,
            spatial_scale,
            sampling_ratio,
            aligned,
            clockwise,
        )
    _feature_map(input)
    pooled_h, pooled_w = _pooled(output_size, spatial_scale)
    rois = rois_tensor(input, boxes, 5)
    return torch.ops.roipool.roi_align_rotated(
        input, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned, clockwise
    )


def prroi_pool(
    input: Tensor, boxes: Union[Tensor, List[Tensor]], output_size: BroadcastingList2[int], spatial_scale: float = 1.0
) -> Tensor:
    """Precise RoI Pooling; see :func:`roipool.prroi_pool`."""
    if not torch.jit.is_scripting():
        return _eager(prroi_pool, _prroi_pool.prroi_pool, input, boxes, output_size, spatial_scale)
    _feature_map(input)
    pooled_h, pooled_w = _pooled(output_size, spatial_scale)
    rois = rois_tensor(input, boxes)
    return torch.ops.roipool.prroi_pool(input, rois, spatial_scale, pooled_h, pooled_w)


def _script_as_torch_functions() -> None:
    """Let ``torch.jit.script`` compile ``roipool.<op>`` (the NumPy/torch dispatcher) as ``roipool.torch.<op>``.

    ``torch.jit.script`` replaces a function marked ``__script_if_tracing_wrapper``
    by its ``__original_fn`` (the hook of ``torch.jit._script_if_tracing``); the
    dispatchers import no torch, so the mark is set here, when torch is loaded.
    """
    package = sys.modules["roipool"]
    for name in __all__:
        dispatcher = getattr(package, name)
        dispatcher.__script_if_tracing_wrapper = True
        dispatcher.__original_fn = globals()[name]


_script_as_torch_functions()
