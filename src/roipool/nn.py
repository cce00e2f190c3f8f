"""``torch.nn`` layers of the RoI family, drop-in for ``torchvision.ops``' layers.

Each layer is a thin ``nn.Module`` around the functional op in
``_torch/<op>.py`` (where the custom ops and autograd live; ONNX exporters in
``_torch/onnx.py``): same constructor, ``forward(input, rois)`` and ``repr`` as
torchvision's. The layers call the torch-only functions of ``roipool.torch``
(TorchScript-compatible), and record themselves as one ``call_module`` node
under ``torch.fx`` tracing (``fx_module_call``). To add a layer, give its
functional op in ``_torch/<op>.py`` and ``roipool/torch.py`` and a class here in
the same shape (``docs/pytorch.md``, "A new op").

Importing this module imports torch and registers the ``roipool::*`` custom
ops and their ONNX exporters.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from . import _checks
from . import torch as _ops
from ._torch._tracing import fx_module_call
from ._torch.onnx import onnx_translation_table

__all__ = [
    "RoIPool",
    "roi_pool",
    "RoIAlign",
    "MultiScaleRoIAlign",
    "roi_align",
    "PSRoIPool",
    "ps_roi_pool",
    "PSRoIAlign",
    "ps_roi_align",
    "onnx_translation_table",
]

roi_pool = _ops.roi_pool
roi_align = _ops.roi_align

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
        if not torch.jit.is_scripting():
            node = fx_module_call(self, input, rois)  # a leaf module under torch.fx tracing
            if node is not None:
                return node
        return _ops.roi_pool(input, rois, self.output_size, self.spatial_scale)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(output_size={self.output_size}, spatial_scale={self.spatial_scale})"


# ---- position-sensitive layers (R-FCN) ----

ps_roi_pool = _ops.ps_roi_pool
ps_roi_align = _ops.ps_roi_align


class PSRoIPool(nn.Module):
    """Position-sensitive RoI average pooling layer (R-FCN); see :func:`roipool.ps_roi_pool`.

    Args:
        output_size (int or (int, int)): ``(pooled_h, pooled_w)``.
        spatial_scale (float): image-to-feature-map factor.

    ``forward(input (Tensor[N, C, H, W]), rois (Tensor[K, 5] or List[Tensor[L, 4]]))``
    returns ``Tensor[K, C / (pooled_h * pooled_w), pooled_h, pooled_w]``.
    """

    def __init__(self, output_size: Union[int, Tuple[int, int]], spatial_scale: float):
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale

    def forward(self, input: Tensor, rois: Boxes) -> Tensor:
        if not torch.jit.is_scripting():
            node = fx_module_call(self, input, rois)  # a leaf module under torch.fx tracing
            if node is not None:
                return node
        return _ops.ps_roi_pool(input, rois, self.output_size, self.spatial_scale)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(output_size={self.output_size}, spatial_scale={self.spatial_scale})"


class PSRoIAlign(nn.Module):
    """Position-sensitive RoIAlign layer; see :func:`roipool.ps_roi_align`.

    Args:
        output_size (int or (int, int)): ``(pooled_h, pooled_w)``.
        spatial_scale (float): image-to-feature-map factor.
        sampling_ratio (int): samples per bin side; ``<= 0`` adaptive (at least one).

    ``forward(input, rois)`` as :class:`PSRoIPool`.
    """

    def __init__(self, output_size: Union[int, Tuple[int, int]], spatial_scale: float, sampling_ratio: int):
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio

    def forward(self, input: Tensor, rois: Boxes) -> Tensor:
        if not torch.jit.is_scripting():
            node = fx_module_call(self, input, rois)  # a leaf module under torch.fx tracing
            if node is not None:
                return node
        return _ops.ps_roi_align(input, rois, self.output_size, self.spatial_scale, self.sampling_ratio)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio})"
        )


class RoIAlign(nn.Module):
    """RoIAlign layer (Mask R-CNN); see :func:`roipool.roi_align`.

    Args:
        output_size (int or (int, int)): ``(pooled_h, pooled_w)``.
        spatial_scale (float): image-to-feature-map factor.
        sampling_ratio (int): samples per bin side; ``<= 0`` is adaptive.
        aligned (bool): half-cell pixel model (``True``) or the legacy rule.

    ``forward(input (Tensor[N, C, H, W]), rois (Tensor[K, 5] or List[Tensor[L, 4]]))``
    returns ``Tensor[K, C, pooled_h, pooled_w]``.
    """

    def __init__(
        self, output_size: Union[int, Tuple[int, int]], spatial_scale: float, sampling_ratio: int, aligned: bool = False
    ):
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, input: Tensor, rois: Boxes) -> Tensor:
        if not torch.jit.is_scripting():
            node = fx_module_call(self, input, rois)  # a leaf module under torch.fx tracing
            if node is not None:
                return node
        return _ops.roi_align(input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned})"
        )


class MultiScaleRoIAlign(nn.Module):
    """RoIAlign over a feature pyramid, each box pooled from the level that suits its size.

    Same interface and rules as torchvision's ``MultiScaleRoIAlign``:

    - the feature maps used are the entries of ``x`` named in ``featmap_names``,
      in ``x``'s order, finest first;
    - on the first call each level's scale is inferred as ``2 ** round(log2(H_level / H_image))``
      where ``H_image`` is the largest image height in ``image_shapes``; the
      coarsest and finest levels give ``k_min = int(-log2(finest scale))`` and
      ``k_max = int(-log2(coarsest scale))``, and all are kept for later calls;
    - a box of area ``w * h`` (image pixels) goes to level
      ``floor(canonical_level + log2(sqrt(w * h) / canonical_scale) + 1e-6)``,
      clamped to ``[k_min, k_max]`` (eq. 1 of the FPN paper: a
      ``canonical_scale``-sided box lands on ``canonical_level``);
    - it is pooled there by :func:`roipool.roi_align` with ``aligned=False``.

    Args:
        featmap_names (List[str]): names of the feature maps to pool from.
        output_size (int or (int, int)): ``(pooled_h, pooled_w)``.
        sampling_ratio (int): samples per bin side; ``<= 0`` is adaptive.
        canonical_scale (int): box side that maps to ``canonical_level``.
        canonical_level (int): pyramid level of a ``canonical_scale``-sided box.

    ``forward(x (Dict[str, Tensor[N, C, H_l, W_l]]), boxes (List[Tensor[L_i, 4]]),
    image_shapes (List[(height, width)]))`` returns ``Tensor[K, C, pooled_h, pooled_w]``
    with the boxes of all images in order.
    """

    # Real objects, not strings (this module postpones annotations): TorchScript reads them for the attributes' types.
    __annotations__ = {"scales": Optional[List[float]], "level_range": Optional[Tuple[int, int]]}

    def __init__(
        self,
        featmap_names: List[str],
        output_size: Union[int, Tuple[int, int], List[int]],
        sampling_ratio: int,
        *,
        canonical_scale: int = 224,
        canonical_level: int = 4,
    ):
        super().__init__()
        if isinstance(featmap_names, (str, bytes)) or not isinstance(featmap_names, (list, tuple)):
            raise TypeError(f"featmap_names must be a list of names (str), got {featmap_names!r}")
        if len(featmap_names) == 0 or not all(isinstance(name, str) for name in featmap_names):
            raise ValueError(f"featmap_names must be a non-empty list of names (str), got {featmap_names!r}")
        _checks.positive_scale(canonical_scale, "canonical_scale")
        canonical_level = _checks.pyramid_level(canonical_level)
        self.featmap_names = list(featmap_names)
        self.sampling_ratio = _checks.sampling_ratio_int(sampling_ratio)
        self.output_size = _checks.output_size_pair(output_size)
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level
        self.scales = None
        self.level_range = None

    def forward(self, x: Dict[str, Tensor], boxes: List[Tensor], image_shapes: List[Tuple[int, int]]) -> Tensor:
        if not torch.jit.is_scripting():
            node = fx_module_call(self, x, boxes, image_shapes)  # a leaf module under torch.fx tracing
            if node is not None:
                return node
            if isinstance(boxes, tuple):
                boxes = list(boxes)
            _check_pyramid_call(self, x, boxes, image_shapes)
        # Plain loops, no comprehension with ``if``: TorchScript compiles them, torch.compile unrolls them.
        features: List[Tensor] = []
        for name, feature in x.items():
            if name in self.featmap_names:
                features.append(feature)
        if len(features) == 0:
            raise ValueError("x holds none of the feature maps named in featmap_names")
        scales = self.scales
        level_range = self.level_range
        if scales is None or level_range is None:
            scales, level_range = infer_scales(features, image_shapes)
            self.scales = scales
            self.level_range = level_range
        first = features[0]
        rois = _ops.rois_tensor(first, boxes)
        if len(features) == 1:
            return _ops.roi_align(first, rois, self.output_size, scales[0], self.sampling_ratio)
        if not torch.jit.is_scripting():
            _check_box_values(rois)
        levels = box_levels(boxes, level_range, self.canonical_scale, self.canonical_level)
        shape = (rois.shape[0], first.shape[1], self.output_size[0], self.output_size[1])
        # every box has a map to be pooled from, so every row is written: no zero fill, whose
        # parallel pass left torch's OpenMP threads spinning beside roipool's kernels (a
        # maskrcnn-sized P2 to P5 forward 50 -> 41 ms; docs/pytorch.md); with levels missing
        # between the finest and the coarsest, their boxes stay zero, as in torchvision
        every_row = level_range[1] - level_range[0] + 1 == len(features)
        if not torch.jit.is_scripting():  # a plain condition: TorchScript then skips the block
            if _rows_in_one_step(features, rois):
                indices = [torch.where(levels == level)[0] for level in range(len(features))]
                pooled = [
                    _ops.roi_align(feature, rois[index], self.output_size, scale, self.sampling_ratio).to(first.dtype)
                    for feature, index, scale in zip(features, indices, scales)
                ]
                return _LevelRows.apply(shape, every_row, indices, *pooled)
        result = first.new_empty(shape) if every_row else first.new_zeros(shape)
        for level in range(len(features)):
            # the one data-dependent step (under torch.compile: captured with fullgraph=True, else a graph break)
            index = torch.where(levels == level)[0]
            pooled = _ops.roi_align(features[level], rois[index], self.output_size, scales[level], self.sampling_ratio)
            result[index] = pooled.to(result.dtype)
        return result

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(featmap_names={self.featmap_names}, "
            f"output_size={self.output_size}, sampling_ratio={self.sampling_ratio})"
        )


def _rows_in_one_step(features: List[Tensor], rois: Tensor) -> bool:
    """Whether ``MultiScaleRoIAlign`` puts the levels' rows in place through :class:`_LevelRows`:
    a call whose autograd wants a gradient for a level or the boxes, eager or compiled (Dynamo
    traces the function; not under ``torch.jit.trace`` or a ``torch.func`` transform)."""
    if torch.jit.is_tracing() or torch._C._are_functorch_transforms_active():
        return False
    return torch.is_grad_enabled() and (rois.requires_grad or any(f.requires_grad for f in features))


class _LevelRows(torch.autograd.Function):
    """The levels' pooled rows, each level's at its boxes' ``index``, as one autograd step whose
    backward hands each level its rows of the gradient (``grad.index_select(0, index)``).

    Written as ``result[index] = pooled`` level by level, as torchvision does, every write after
    the first makes autograd copy the whole gradient in the backward (``IndexPutBackward0``'s
    gradient for the tensor written into): three copies of the result's size for P2 to P5, a
    third of a training step on the CPU (docs/pytorch.md). The price is that every level's
    output is held until all are put in place, twice the result's memory for that moment, so
    calls that want no gradient keep the level-by-level writes.
    """

    @staticmethod
    def forward(ctx, shape: List[int], every_row: bool, indices: List[Tensor], *pooled: Tensor) -> Tensor:
        result = pooled[0].new_empty(shape) if every_row else pooled[0].new_zeros(shape)
        for index, rows in zip(indices, pooled):
            result[index] = rows
        ctx.indices = indices
        return result

    @staticmethod
    def backward(ctx, grad: Tensor):
        # index_select copies whole rows: 1.1 ms for 304 rows of 256 x 7 x 7 where grad[index] took 2.9 (one thread)
        return (None, None, None, *(grad.index_select(0, index) for index in ctx.indices))


def _check_pyramid_call(layer: MultiScaleRoIAlign, x, boxes, image_shapes) -> None:
    """``MultiScaleRoIAlign``'s arguments, in Python (not in TorchScript): a ``ValueError`` or
    ``TypeError`` naming the argument, before any work (torchvision's layer raises whatever its
    arithmetic does, or pools from wrong scales)."""
    if not isinstance(x, Mapping):
        raise TypeError(f"x must be a dict of feature maps (name: Tensor[N, C, H, W]), got {type(x).__name__}")
    missing = [name for name in layer.featmap_names if name not in x]
    if missing:
        raise ValueError(
            f"x has no feature map named {missing[0]!r} (featmap_names {layer.featmap_names}, x {list(x)})"
        )
    features = [(name, f) for name, f in x.items() if name in layer.featmap_names]
    for name, f in features:
        if not isinstance(f, torch.Tensor) or f.dim() != 4:
            raise ValueError(f"x[{name!r}] must be a Tensor[N, C, H, W], got {getattr(f, 'shape', type(f).__name__)}")
        if f.shape[0] != features[0][1].shape[0] or f.shape[1] != features[0][1].shape[1]:
            raise ValueError(
                f"x[{name!r}] has shape {tuple(f.shape)}, but x[{features[0][0]!r}] {tuple(features[0][1].shape)}: "
                "every level must hold the same images and channels"
            )
        if f.shape[2] == 0:
            raise ValueError(f"x[{name!r}] has no rows (shape {tuple(f.shape)}): no scale can be inferred from it")
    images = features[0][1].shape[0]
    if not isinstance(boxes, list):
        raise TypeError(f"boxes must be a list of {images} Tensor[L_i, 4], one per image, got {type(boxes).__name__}")
    if len(boxes) != images:
        raise ValueError(f"boxes must hold one Tensor[L_i, 4] per image ({images}), got {len(boxes)}")
    for i, b in enumerate(boxes):
        if not isinstance(b, torch.Tensor):
            raise TypeError(f"boxes[{i}] must be a Tensor[L, 4], got {type(b).__name__}")
    _checks.image_shapes_list(image_shapes)
    first = features[0][1]
    if not torch.compiler.is_compiling():  # a box count may have no value while tracing
        count = sum(int(b.shape[0]) for b in boxes)
        itemsize = 4 if first.element_size() < 4 else first.element_size()
        _checks.pooled_output_fits(count, int(first.shape[1]), *layer.output_size, itemsize, layer.output_size)


def _check_box_values(rois: Tensor) -> None:
    """Every box's corners are finite: a NaN one would be given no level and pooled as zeros. Eager
    calls only (it reads the values); compiled graphs raise from the kernel of the level that box
    is sent to (:func:`box_levels`)."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or rois.is_meta:
        return
    finite = torch.isfinite(rois[:, 1:]).all(dim=1)
    if not bool(finite.all()):
        k = int(torch.nonzero(~finite)[0, 0])
        raise ValueError(f"boxes: box {k} has a coordinate that is NaN or infinite: {rois[k, 1:].tolist()}")


def infer_scales(features: List[Tensor], image_shapes: List[Tuple[int, int]]) -> Tuple[List[float], Tuple[int, int]]:
    """Each level's scale (a power of two, from the heights) and the pyramid's ``(k_min, k_max)``.

    Plain Python arithmetic on the shapes (``round`` is half to even, as
    torchvision's ``torch.round``): ``torch.compile`` folds it to constants,
    with no graph break and no tensor read back. torchvision takes ``log2`` in
    float32; this takes it in float64, which rounds differently only if
    ``H_level / H_image`` lies within about 1e-7 of an odd power of ``sqrt(2)``,
    far from any pyramid's ratio (they are within a few per cent of powers of two).
    """
    if len(image_shapes) == 0:
        raise ValueError("image_shapes must name the size of at least one image")
    image_h = 0
    for shape in image_shapes:
        image_h = max(image_h, int(shape[0]))
    scales: List[float] = []
    exponents: List[int] = []
    for feature in features:
        # log(r) / log(2): TorchScript has no math.log2; the quotient is within 1e-15 of log2(r)
        exponent = int(round(math.log(float(feature.shape[-2]) / float(image_h)) / math.log(2.0)))
        exponents.append(exponent)
        scales.append(2.0**exponent)
    k_min = -exponents[0]
    k_max = -exponents[-1]
    return scales, (k_min, k_max)


def box_levels(boxes: List[Tensor], level_range: Tuple[int, int], canonical_scale: int, canonical_level: int) -> Tensor:
    """Pyramid level index (0 = finest level used) of every box, in the boxes' dtype arithmetic."""
    k_min, k_max = level_range
    b = torch.cat(boxes, dim=0)
    side = torch.sqrt((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))
    eps = torch.tensor(1e-6, dtype=side.dtype)
    level = torch.floor(canonical_level + torch.log2(side / canonical_scale) + eps)
    # a box with a NaN corner goes to the finest level, whose roi_align refuses it (not to no level)
    level = torch.nan_to_num(level, nan=float(k_min))
    return torch.clamp(level, min=k_min, max=k_max).to(torch.int64) - k_min


# ---- rotated RoIAlign (importing registers the roipool::roi_align_rotated* ops) ----


roi_align_rotated = _ops.roi_align_rotated
__all__ += ["RoIAlignRotated", "roi_align_rotated"]


class RoIAlignRotated(nn.Module):
    """Rotated RoIAlign layer (oriented detection; mmcv/mmrotate's ``RoIAlignRotated``);
    see :func:`roipool.roi_align_rotated`.

    Args:
        output_size (int or (int, int)): ``(pooled_h, pooled_w)``.
        spatial_scale (float): image-to-feature-map factor.
        sampling_ratio (int): samples per bin side; ``<= 0`` adaptive.
        aligned (bool): shift the centre by half a cell (default True).
        clockwise (bool): angles count clockwise (default False).

    ``forward(input (Tensor[N, C, H, W]), rois (Tensor[K, 6] or List[Tensor[L, 5]]))``
    returns ``Tensor[K, C, pooled_h, pooled_w]``; rows are ``[batch_index, cx, cy, w, h, angle]``.
    """

    def __init__(
        self,
        output_size: Union[int, Tuple[int, int]],
        spatial_scale: float = 1.0,
        sampling_ratio: int = -1,
        aligned: bool = True,
        clockwise: bool = False,
    ):
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned
        self.clockwise = clockwise

    def forward(self, input: Tensor, rois: Boxes) -> Tensor:
        if not torch.jit.is_scripting():
            node = fx_module_call(self, input, rois)  # a leaf module under torch.fx tracing
            if node is not None:
                return node
        return _ops.roi_align_rotated(
            input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned, self.clockwise
        )

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}, clockwise={self.clockwise})"
        )


# ---- Precise RoI Pooling ----


__all__ += ["PrRoIPool"]


class PrRoIPool(nn.Module):
    """Precise RoI Pooling (IoU-Net, ATOM, DiMP): :func:`roipool.prroi_pool` as a layer.

    Each bin is the exact mean of the feature map's bilinear interpolant over
    the bin (cell centres at integer coordinates, corners ``x * spatial_scale``,
    no rounding). Differentiable with respect to the features and to the boxes,
    so a tracker can refine boxes by gradient ascent on a predicted IoU.

    Args:
        output_size (int or (int, int)): ``(pooled_h, pooled_w)``.
        spatial_scale (float): image-to-feature-map factor (1/16 for a stride-16 map).

    Shape:
        ``forward(input (N, C, H, W), boxes (K, 5) or list of N (L, 4)) -> (K, C, pooled_h, pooled_w)``.
    """

    def __init__(self, output_size: Union[int, Tuple[int, int]], spatial_scale: float = 1.0):
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale

    def forward(self, input: Tensor, boxes: Union[Tensor, List[Tensor]]) -> Tensor:
        if not torch.jit.is_scripting():
            node = fx_module_call(self, input, boxes)  # a leaf module under torch.fx tracing
            if node is not None:
                return node
        return _ops.prroi_pool(input, boxes, self.output_size, self.spatial_scale)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(output_size={self.output_size}, spatial_scale={self.spatial_scale})"
