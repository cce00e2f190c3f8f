"""Quantized RoIAlign on the CPU: torchvision's semantics and argument rules for quantized feature maps.

``roi_align`` of a quantized ``input`` (``torch.quint8``, ``qint8`` or
``qint32``, per-tensor affine, on the CPU) with quantized ``rois`` of the same
dtype (``Tensor[K, 5]``, or a list holding one ``Tensor[L, 4]``) is

    quantize_per_tensor(roi_align(input.dequantize(), rois.dequantize()), input.q_scale(), input.q_zero_point())

computed in float32 and rounded once, as torchvision's ``qroi_align`` does (its
sums may run in another order, so a value can differ by one quantization step).
Like torchvision, only one image per batch is allowed: not every batch index
survives the rois' quantization, so the rois' first column is ignored (taken as 0).
Written in TorchScript's subset so the scripted path (``roipool.torch``) calls it too.
"""

from typing import List, Union

import torch
from torch import Tensor

QUANTIZED_DTYPES = (torch.quint8, torch.qint8, torch.qint32)


def roi_align_quantized(
    input: Tensor,
    boxes: Union[Tensor, List[Tensor]],
    pooled_h: int,
    pooled_w: int,
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
) -> Tensor:
    """Quantized ``Tensor[K, C, pooled_h, pooled_w]`` with ``input``'s dtype, scale and zero point."""
    if input.device.type != "cpu":
        raise ValueError("a quantized input must be a CPU tensor")
    if not torch.jit.is_scripting():  # TorchScript cannot compare qschemes; q_scale() refuses per-channel there
        if input.qscheme() != torch.per_tensor_affine:
            raise ValueError("a quantized input must be quantized per tensor (torch.per_tensor_affine)")
    if input.dim() != 4:
        raise ValueError("input must have shape (N, C, H, W)")
    if input.size(0) != 1:
        raise ValueError(
            "a quantized input must hold one image (N == 1): the rois' batch index is quantized too, so it is ignored"
        )
    if isinstance(boxes, list):
        if len(boxes) != 1:
            raise ValueError("boxes must hold one tensor per image of input (one, for a quantized input)")
        b = boxes[0]
        if not b.is_quantized or b.dtype != input.dtype:
            raise TypeError("boxes must be quantized with the input's dtype when input is quantized")
        if b.dim() != 2 or b.size(1) != 4:
            raise ValueError("boxes[0] must have shape (L, 4)")
        corners = b.dequantize()
    else:
        if not boxes.is_quantized or boxes.dtype != input.dtype:
            raise TypeError("boxes must be quantized with the input's dtype when input is quantized")
        if boxes.dim() != 2 or boxes.size(1) != 5:
            raise ValueError("boxes must have shape (K, 5)")
        corners = boxes.dequantize()[:, 1:]
    rois = torch.cat([torch.zeros((corners.size(0), 1), dtype=torch.float32), corners], dim=1)
    pooled = torch.ops.roipool.roi_align(
        input.dequantize(), rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned
    )
    return torch.quantize_per_tensor(pooled, input.q_scale(), input.q_zero_point(), input.dtype)
