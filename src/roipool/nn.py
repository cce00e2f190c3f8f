"""``torch.nn`` layers of the RoI family, drop-in for ``torchvision.ops``' layers.

Each layer is a thin ``nn.Module`` around the functional op in ``_torch_ops``
(where the custom ops, autograd and ONNX exporters live): same constructor,
``forward(input, rois)`` and ``repr`` as torchvision's. To add a layer, give
its functional op in ``_torch_ops`` and a class here in the same shape.

Importing this module imports torch and registers the ``roipool::*`` custom
ops and their ONNX exporters.
"""

from __future__ import annotations

from typing import List, Tuple, Union

from torch import Tensor, nn

from . import _torch_ops
from ._torch_ops import onnx_translation_table

__all__ = ["RoIPool", "roi_pool", "onnx_translation_table"]

roi_pool = _torch_ops.roi_pool

Boxes = Union[Tensor, List[Tensor]]


class RoIPool(nn.Module):
    """RoI max pooling layer (Fast R-CNN); see :func:`roipool.roi_pool`.

    Args:
        output_size (int or (int, int)): ``(pooled_h, pooled_w)``.
        spatial_scale (float): image-to-feature-map factor (1/16 for VGG16 conv5).

    ``forward(input (Tensor[N, C, H, W]), rois (Tensor[K, 5] or List[Tensor[L, 4]]))``
    returns ``Tensor[K, C, pooled_h, pooled_w]``.
    """

    def __init__(self, output_size: Union[int, Tuple[int, int]], spatial_scale: float):
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale

    def forward(self, input: Tensor, rois: Boxes) -> Tensor:
        return _torch_ops.roi_pool(input, rois, self.output_size, self.spatial_scale)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(output_size={self.output_size}, spatial_scale={self.spatial_scale})"
