"""roipool: exact, fast Region of Interest pooling for NumPy and PyTorch.

A NumPy array in gives a NumPy array out; a torch tensor in gives a
differentiable tensor out. Importing roipool never imports torch: the torch
frontend is loaded only when a tensor arrives. ``docs/semantics.md`` defines
every op exactly.
"""

from __future__ import annotations

import sys

from ._version import __version__

__all__ = [
    "__version__",
    "roi_pool",
    "roi_pool_with_argmax",
    "roi_pool_backward",
    "roi_align",
    "roi_align_backward",
    "roi_align_boxes_backward",
    "ps_roi_pool",
    "ps_roi_pool_backward",
    "ps_roi_align",
    "ps_roi_align_backward",
    "ps_roi_align_boxes_backward",
    "roi_align_rotated",
    "roi_align_rotated_backward",
    "prroi_pool",
    "prroi_pool_backward",
    "prroi_pool_boxes_backward",
    "set_num_threads",
    "get_num_threads",
    "set_memory_cache",
    "get_memory_cache",
]


def _frontend(name: str):
    """The NumPy frontend module ``roipool._numpy.<name>``. They are imported together on the
    first NumPy call (Numba's import is most of the cost either way) and kept here: an import
    statement in every call took 10 to 20 us of a small call after an idle spell (the import
    machinery's Python code), a lookup here a few. The torch paths keep their import statement,
    which ``torch.compile`` traces."""
    module = _FRONTENDS.get(name)
    if module is None:
        from ._numpy import _layout, prroi_pool, ps_roi, roi_align, roi_align_rotated, roi_pool

        modules = (_layout, prroi_pool, ps_roi, roi_align, roi_align_rotated, roi_pool)
        _FRONTENDS.update((m.__name__.rpartition(".")[2], m) for m in modules)
        module = _FRONTENDS[name]
    return module


_FRONTENDS: dict = {}


def _is_tensor(x) -> bool:
    """A torch tensor, or a ``torch.fx.Proxy`` standing for one while ``torch.fx`` traces (the torch path records it)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    if isinstance(x, torch.Tensor):
        return True
    fx = sys.modules.get("torch.fx")
    return fx is not None and isinstance(x, fx.Proxy)


def _tensor_layout(layout) -> None:
    """Tensors carry their memory format: ``layout`` may only be its default there."""
    if type(layout) is str and layout == "nchw":  # the default, without the checks' case folding
        return
    from ._checks import layout_is_nhwc

    if layout_is_nhwc(layout):
        raise ValueError(
            "layout='nhwc' is for NumPy arrays; a torch tensor's memory format decides its output's "
            "(pass input.contiguous(memory_format=torch.channels_last) for channels-last)"
        )


def _nhwc(layout) -> bool:
    if type(layout) is str and layout == "nchw":  # the default: 40 us less after an idle spell
        return False
    from ._checks import layout_is_nhwc

    return layout_is_nhwc(layout)


def roi_pool(input, boxes, output_size, spatial_scale=1.0, *, layout="nchw"):
    """RoI max pooling (Fast R-CNN; torchvision's ``roi_pool`` semantics, bit for bit).

    Args:
        input (ndarray or Tensor[N, C, H, W]): the feature map, floating.
        boxes (ndarray or Tensor[K, 5], or list of N arrays [L_i, 4]): boxes in
            input-image coordinates, rows ``[batch_index, x1, y1, x2, y2]``, or
            per image ``[x1, y1, x2, y2]``.
        output_size (int or (int, int)): ``(pooled_h, pooled_w)``.
        spatial_scale (float): image-to-feature-map factor (1/16 for VGG16 conv5).
        layout ("nchw" or "nhwc"): NumPy only; ``"nhwc"`` takes and returns
            channels-last arrays, ``(N, H, W, C)`` in and ``(K, pooled_h, pooled_w, C)``
            out, with the same values bit for bit. A tensor's memory format
            decides instead: a ``torch.channels_last`` map gives a channels-last
            output (and input gradient).

    Returns:
        ndarray or Tensor[K, C, pooled_h, pooled_w] of the input's dtype. A
        tensor input gives a tensor differentiable with respect to ``input``.
    """
    if _is_tensor(input):
        from . import torch as torch_frontend  # torch-only functions: scriptable, FX leaves

        _tensor_layout(layout)
        return torch_frontend.roi_pool(input, boxes, output_size, spatial_scale)
    _layout = _frontend("_layout")
    numpy_frontend = _frontend("roi_pool")

    nhwc = _nhwc(layout)
    out = numpy_frontend.roi_pool(_layout.map_in(input, nhwc, "input"), boxes, output_size, spatial_scale, nhwc)
    return _layout.map_out(out, nhwc)


def roi_pool_with_argmax(input, boxes, output_size, spatial_scale=1.0, *, layout="nchw"):
    """NumPy forward that also returns where each maximum came from.

    Returns ``(output, argmax)``: ``argmax`` is int32 of the output's shape, the
    flat index ``h * W + w`` of each maximum in its image and channel, or -1
    for an empty bin. Pass it to :func:`roi_pool_backward`.

    ``layout="nhwc"``: every array and shape channels-last, as in :func:`roi_pool`.
    """
    _layout = _frontend("_layout")
    numpy_frontend = _frontend("roi_pool")

    nhwc = _nhwc(layout)
    x = _layout.map_in(input, nhwc, "input")
    out, argmax = numpy_frontend.roi_pool_with_argmax(x, boxes, output_size, spatial_scale, nhwc)
    return _layout.map_out(out, nhwc), _layout.map_out(argmax, nhwc)


def roi_pool_backward(grad_output, argmax, boxes, input_shape, *, input=None, spatial_scale=1.0, layout="nchw"):
    """Gradient of :func:`roi_pool` with respect to ``input`` (NumPy).

    ``grad_output (K, C, pooled_h, pooled_w)`` is routed to the input element
    named by ``argmax`` (from :func:`roi_pool_with_argmax`), summed where
    several outputs chose the same element. ``boxes`` are those of the forward
    call (for the batch index). Returns an array of ``input_shape``.

    Without an argmax: pass ``argmax=None`` with the forward's ``input`` and
    ``spatial_scale`` (the output size is ``grad_output``'s). One kernel then
    finds each bin's maximum again and adds the gradient there; the result is
    bit-identical, and the forward can be the cheaper :func:`roi_pool`, which
    writes no argmax (as large as the output). ``grad_output`` must then have
    ``input``'s dtype.

    ``layout="nhwc"``: every array and shape channels-last, as in :func:`roi_pool`.
    """
    _layout = _frontend("_layout")
    numpy_frontend = _frontend("roi_pool")

    nhwc = _nhwc(layout)
    grad = numpy_frontend.roi_pool_backward(
        _layout.pooled_in(grad_output, nhwc, "grad_output"),
        _layout.pooled_in(argmax, nhwc, "argmax"),
        boxes,
        _layout.shape_in(input_shape, nhwc),
        input=_layout.map_in(input, nhwc, "input"),
        spatial_scale=spatial_scale,
        nhwc=nhwc,
    )
    return _layout.map_out(grad, nhwc)


# ---- roi_align ----


def roi_align(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False, *, layout="nchw"):
    """RoIAlign (Mask R-CNN): bilinear samples averaged over each bin; torchvision's ``roi_align``.

    Args:
        input (ndarray or Tensor[N, C, H, W]): the feature map, floating
            (float16 is computed in float32).
        boxes (ndarray or Tensor[K, 5], or list of N arrays [L_i, 4]): boxes in
            input-image coordinates, rows ``[batch_index, x1, y1, x2, y2]``, or
            per image ``[x1, y1, x2, y2]``.
        output_size (int or (int, int)): ``(pooled_h, pooled_w)``.
        spatial_scale (float): image-to-feature-map factor (1/16 for VGG16 conv5).
        sampling_ratio (int): samples per bin side, at most ``2**20``; ``<= 0``
            means adaptive, ``ceil(roi_size / output_size)`` per side.
        aligned (bool): ``True`` shifts boxes by half a cell so that cell
            centres sit at half-integer coordinates (the correct pixel model);
            ``False`` keeps the legacy rule (no shift; extents below one cell
            are stretched to one cell).
        layout ("nchw" or "nhwc"): NumPy only; ``"nhwc"`` takes and returns
            channels-last arrays, ``(N, H, W, C)`` in and ``(K, pooled_h, pooled_w, C)``
            out, with the same values bit for bit. A tensor's memory format
            decides instead: a ``torch.channels_last`` map gives a channels-last
            output (and input gradient).

    Returns:
        ndarray or Tensor[K, C, pooled_h, pooled_w] of the input's dtype. The
        exact rules, including boxes that leave the map or are inverted, are
        in ``docs/semantics.md`` (RoIAlign).
    """
    if _is_tensor(input):
        from . import torch as torch_frontend  # torch-only functions: scriptable, FX leaves

        _tensor_layout(layout)
        return torch_frontend.roi_align(input, boxes, output_size, spatial_scale, sampling_ratio, aligned)
    _layout = _frontend("_layout")
    numpy_frontend = _frontend("roi_align")

    nhwc = _nhwc(layout)
    x = _layout.map_in(input, nhwc, "input")
    out = numpy_frontend.roi_align(x, boxes, output_size, spatial_scale, sampling_ratio, aligned, nhwc)
    return _layout.map_out(out, nhwc)


def roi_align_backward(
    grad_output, boxes, input_shape, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False, *, layout="nchw"
):
    """Gradient of :func:`roi_align` with respect to ``input`` (NumPy).

    ``grad_output (K, C, pooled_h, pooled_w)`` with the ``boxes`` and
    arguments of the forward call; returns an array of ``input_shape``
    ``(N, C, H, W)`` in ``grad_output``'s dtype. Deterministic: the result does
    not depend on the thread count.

    ``layout="nhwc"``: every array and shape channels-last, as in :func:`roi_align`.
    """
    _layout = _frontend("_layout")
    numpy_frontend = _frontend("roi_align")

    nhwc = _nhwc(layout)
    grad = numpy_frontend.roi_align_backward(
        _layout.pooled_in(grad_output, nhwc, "grad_output"),
        boxes,
        _layout.shape_in(input_shape, nhwc),
        output_size,
        spatial_scale,
        sampling_ratio,
        aligned,
        nhwc,
    )
    return _layout.map_out(grad, nhwc)


def roi_align_boxes_backward(
    grad_output, input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False, *, layout="nchw"
):
    """Gradient of :func:`roi_align` with respect to the box coordinates (NumPy).

    ``grad_output (K, C, pooled_h, pooled_w)``; ``input (N, C, H, W)``,
    ``boxes`` and the other arguments as in the forward call (the argument
    order of :func:`prroi_pool_boxes_backward`). Returns the gradient in the
    format of ``boxes``: a ``(K, 5)`` array (column 0, the batch index,
    zero) or a list of ``(L_i, 4)`` arrays, in ``input``'s dtype (computed
    in its compute dtype). The derivative is that of every sample's
    position, piecewise: samples clamped at the map's border, or outside
    it, do not move; with ``aligned=False`` an extent stretched to one cell
    does not follow the box; an adaptive grid is held at its size
    (``docs/semantics.md``, RoIAlign, gradient with respect to the boxes).
    Deterministic: the result does not depend on the thread count.

    ``layout="nhwc"``: every array and shape channels-last, as in :func:`roi_align`.
    """
    _layout = _frontend("_layout")
    numpy_frontend = _frontend("roi_align")

    nhwc = _nhwc(layout)
    return numpy_frontend.roi_align_boxes_backward(
        _layout.pooled_in(grad_output, nhwc, "grad_output"),
        _layout.map_in(input, nhwc, "input"),
        boxes,
        output_size,
        spatial_scale,
        sampling_ratio,
        aligned,
    )


# ---- position-sensitive pooling (R-FCN): ps_roi_pool, ps_roi_align ----


def ps_roi_pool(input, boxes, output_size, spatial_scale=1.0, *, layout="nchw"):
    """Position-sensitive RoI average pooling (R-FCN; torchvision's ``ps_roi_pool``).

    Output channel ``c`` of bin ``(ph, pw)`` averages input channel
    ``(c * pooled_h + ph) * pooled_w + pw`` over the bin. Box corners are
    rounded as in :func:`roi_pool`, but the RoI spans ``max(x2 - x1, 1)``
    cells and bins are clipped to ``[0, H - 1]`` / ``[0, W - 1]`` as torchvision
    does; an empty bin gives 0. See ``docs/semantics.md``.

    Args:
        input (ndarray or Tensor[N, C, H, W]): floating; ``C`` a multiple of ``pooled_h * pooled_w``.
        boxes (ndarray or Tensor[K, 5], or list of N arrays [L_i, 4]): as for :func:`roi_pool`.
        output_size (int or (int, int)): ``(pooled_h, pooled_w)``.
        spatial_scale (float): image-to-feature-map factor.
        layout ("nchw" or "nhwc"): NumPy only; ``"nhwc"`` takes and returns
            channels-last arrays, ``(N, H, W, C)`` in and ``(K, pooled_h, pooled_w, C)``
            out, with the same values bit for bit. A tensor's memory format
            decides instead: a ``torch.channels_last`` map gives a channels-last
            output (and input gradient).

    Returns:
        ndarray or Tensor[K, C / (pooled_h * pooled_w), pooled_h, pooled_w] of the
        input's dtype; a tensor result is differentiable with respect to ``input``.
    """
    if _is_tensor(input):
        from . import torch as torch_frontend  # torch-only functions: scriptable, FX leaves

        _tensor_layout(layout)
        return torch_frontend.ps_roi_pool(input, boxes, output_size, spatial_scale)
    _layout = _frontend("_layout")
    numpy_frontend = _frontend("ps_roi")

    nhwc = _nhwc(layout)
    out = numpy_frontend.ps_roi_pool(_layout.map_in(input, nhwc, "input"), boxes, output_size, spatial_scale)
    return _layout.map_out(out, nhwc)


def ps_roi_pool_backward(grad_output, boxes, input_shape, output_size, spatial_scale=1.0, *, layout="nchw"):
    """Gradient of :func:`ps_roi_pool` with respect to ``input`` (NumPy).

    ``grad_output (K, C / (pooled_h * pooled_w), pooled_h, pooled_w)``; ``boxes``,
    ``output_size`` and ``spatial_scale`` as in the forward call. Each output's
    gradient, divided by its bin's area, goes to every cell of the bin. Returns
    an array of ``input_shape`` ``(N, C, H, W)``.

    ``layout="nhwc"``: every array and shape channels-last, as in :func:`ps_roi_pool`.
    """
    _layout = _frontend("_layout")
    numpy_frontend = _frontend("ps_roi")

    nhwc = _nhwc(layout)
    grad = numpy_frontend.ps_roi_pool_backward(
        _layout.pooled_in(grad_output, nhwc, "grad_output"),
        boxes,
        _layout.shape_in(input_shape, nhwc),
        output_size,
        spatial_scale,
    )
    return _layout.map_out(grad, nhwc)


def ps_roi_align(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, *, layout="nchw"):
    """Position-sensitive RoIAlign (torchvision's ``ps_roi_align``), never NaN.

    Like :func:`ps_roi_pool` in channels, but each bin is the mean of bilinear
    samples: corners are ``x * spatial_scale - 0.5`` (no rounding), each bin
    takes ``sampling_ratio`` samples per side, or ``ceil(bin size)`` when
    ``sampling_ratio <= 0`` -- and always at least one, so an inverted or
    degenerate box gives finite values (torchvision gives NaN there).

    Args:
        input (ndarray or Tensor[N, C, H, W]): floating; ``C`` a multiple of ``pooled_h * pooled_w``.
        boxes (ndarray or Tensor[K, 5], or list of N arrays [L_i, 4]): as for :func:`roi_pool`.
        output_size (int or (int, int)): ``(pooled_h, pooled_w)``.
        spatial_scale (float): image-to-feature-map factor.
        sampling_ratio (int): samples per bin side, at most ``2**20``; ``<= 0`` adaptive.
        layout ("nchw" or "nhwc"): NumPy only; ``"nhwc"`` takes and returns
            channels-last arrays, ``(N, H, W, C)`` in and ``(K, pooled_h, pooled_w, C)``
            out, with the same values bit for bit. A tensor's memory format
            decides instead: a ``torch.channels_last`` map gives a channels-last
            output (and input gradient).

    Returns:
        ndarray or Tensor[K, C / (pooled_h * pooled_w), pooled_h, pooled_w] of the
        input's dtype; a tensor result is differentiable with respect to ``input``
        and the box coordinates (:func:`ps_roi_align_boxes_backward`'s values).
    """
    if _is_tensor(input):
        from . import torch as torch_frontend  # torch-only functions: scriptable, FX leaves

        _tensor_layout(layout)
        return torch_frontend.ps_roi_align(input, boxes, output_size, spatial_scale, sampling_ratio)
    _layout = _frontend("_layout")
    numpy_frontend = _frontend("ps_roi")

    nhwc = _nhwc(layout)
    x = _layout.map_in(input, nhwc, "input")
    return _layout.map_out(numpy_frontend.ps_roi_align(x, boxes, output_size, spatial_scale, sampling_ratio), nhwc)


def ps_roi_align_backward(
    grad_output, boxes, input_shape, output_size, spatial_scale=1.0, sampling_ratio=-1, *, layout="nchw"
):
    """Gradient of :func:`ps_roi_align` with respect to ``input`` (NumPy).

    Arguments as :func:`ps_roi_pool_backward`, plus the forward's
    ``sampling_ratio``. Returns an array of ``input_shape`` ``(N, C, H, W)``.

    ``layout="nhwc"``: every array and shape channels-last, as in :func:`ps_roi_align`.
    """
    _layout = _frontend("_layout")
    numpy_frontend = _frontend("ps_roi")

    nhwc = _nhwc(layout)
    grad = numpy_frontend.ps_roi_align_backward(
        _layout.pooled_in(grad_output, nhwc, "grad_output"),
        boxes,
        _layout.shape_in(input_shape, nhwc),
        output_size,
        spatial_scale,
        sampling_ratio,
    )
    return _layout.map_out(grad, nhwc)


def ps_roi_align_boxes_backward(
    grad_output, input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, *, layout="nchw"
):
    """Gradient of :func:`ps_roi_align` with respect to the box coordinates (NumPy).

    ``grad_output (K, C / (pooled_h * pooled_w), pooled_h, pooled_w)``; ``input
    (N, C, H, W)``, ``boxes`` and the other arguments as in the forward call
    (the argument order of :func:`roi_align_boxes_backward`). Returns the
    gradient in the format of ``boxes``: a ``(K, 5)`` array (column 0, the
    batch index, zero) or a list of ``(L_i, 4)`` arrays, in ``input``'s dtype
    (computed in its compute dtype). Each sample moves with the box; one
    clamped at the map's border, or outside it, does not; an adaptive grid is
    held at its size (``docs/semantics.md``, position-sensitive pooling).
    Deterministic: the result does not depend on the thread count.
    torchvision's ``ps_roi_align`` has no gradient for the boxes.

    ``layout="nhwc"``: every array channels-last, as in :func:`ps_roi_align`.
    """
    _layout = _frontend("_layout")
    numpy_frontend = _frontend("ps_roi")

    nhwc = _nhwc(layout)
    return numpy_frontend.ps_roi_align_boxes_backward(
        _layout.pooled_in(grad_output, nhwc, "grad_output"),
        _layout.map_in(input, nhwc, "input"),
        boxes,
        output_size,
        spatial_scale,
        sampling_ratio,
    )


# ---- rotated RoIAlign (oriented detection; mmcv/mmrotate's roi_align_rotated) ----


def roi_align_rotated(
    input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=True, clockwise=False, *, layout="nchw"
):
    """Rotated RoIAlign: RoIAlign's bin grid laid out in each box's own rotated frame.

    mmcv/mmrotate's ``roi_align_rotated`` semantics. For detectron2's
    ``ROIAlignRotated`` (angles in degrees, always half-pixel aligned) convert
    the angle column: ``boxes[:, 5] = np.deg2rad(boxes[:, 5])`` (or
    ``torch.deg2rad``) with ``aligned=True, clockwise=False``.

    Args:
        input (ndarray or Tensor[N, C, H, W]): the feature map, floating
            (float16 and bfloat16 are computed in float32).
        boxes (ndarray or Tensor[K, 6], or list of N arrays [L_i, 5]): rows
            ``[batch_index, cx, cy, w, h, angle]`` in input-image coordinates
            (angle in radians), or per image ``[cx, cy, w, h, angle]``;
            ``w, h >= 0``.
        output_size (int or (int, int)): ``(pooled_h, pooled_w)``.
        spatial_scale (float): image-to-feature-map factor.
        sampling_ratio (int): samples per bin side, at most ``2**10``; ``<= 0``
            means adaptive, ``ceil(scaled size / output size)`` per side.
        aligned (bool): ``True`` shifts the centre by half a cell (the pixel
            model of ``roi_align(aligned=True)``); ``False`` keeps the legacy
            rule (no shift; sizes below one cell are read as one cell).
        clockwise (bool): ``True`` negates the angle.
        layout ("nchw" or "nhwc"): NumPy only; ``"nhwc"`` takes and returns
            channels-last arrays, ``(N, H, W, C)`` in and ``(K, pooled_h, pooled_w, C)``
            out, with the same values bit for bit. A tensor's memory format
            decides instead: a ``torch.channels_last`` map gives a channels-last
            output (and input gradient).

    Returns:
        ndarray or Tensor[K, C, pooled_h, pooled_w] of the input's dtype. A
        tensor result is differentiable with respect to ``input`` and, when
        they require a gradient, ``boxes`` (``cx, cy, w, h, angle``).
        Exact rules: ``docs/semantics.md`` (Rotated RoIAlign).
    """
    if _is_tensor(input):
        from . import torch as torch_frontend  # torch-only functions: scriptable, FX leaves

        _tensor_layout(layout)
        return torch_frontend.roi_align_rotated(
            input, boxes, output_size, spatial_scale, sampling_ratio, aligned, clockwise
        )
    _layout = _frontend("_layout")
    _rotated = _frontend("roi_align_rotated")

    nhwc = _nhwc(layout)
    x = _layout.map_in(input, nhwc, "input")
    out = _rotated.roi_align_rotated(x, boxes, output_size, spatial_scale, sampling_ratio, aligned, clockwise, nhwc)
    return _layout.map_out(out, nhwc)


def roi_align_rotated_backward(
    grad_output,
    boxes,
    input_shape,
    output_size,
    spatial_scale=1.0,
    sampling_ratio=-1,
    aligned=True,
    clockwise=False,
    *,
    layout="nchw",
):
    """Gradient of :func:`roi_align_rotated` with respect to ``input`` (NumPy).

    ``grad_output (K, C, pooled_h, pooled_w)`` with the ``boxes`` and
    arguments of the forward call; returns an array of ``input_shape``
    ``(N, C, H, W)`` in ``grad_output``'s dtype. Deterministic: the result does
    not depend on the thread count.

    ``layout="nhwc"``: every array and shape channels-last, as in :func:`roi_align_rotated`.
    """
    _layout = _frontend("_layout")
    _rotated = _frontend("roi_align_rotated")

    nhwc = _nhwc(layout)
    grad = _rotated.roi_align_rotated_backward(
        _layout.pooled_in(grad_output, nhwc, "grad_output"),
        boxes,
        _layout.shape_in(input_shape, nhwc),
        output_size,
        spatial_scale,
        sampling_ratio,
        aligned,
        clockwise,
        nhwc,
    )
    return _layout.map_out(grad, nhwc)


# ---- prroi_pool (Precise RoI Pooling: IoU-Net, ATOM, DiMP) ----


def prroi_pool(input, boxes, output_size, spatial_scale=1.0, *, layout="nchw"):
    """Precise RoI Pooling (IoU-Net): the exact mean of the bilinear interpolant over each bin.

    The map is read as a continuous function, the bilinear interpolant of the
    cells (centres at integer coordinates) extended by zeros past the border;
    each bin's value is that function's integral over the bin divided by the
    bin's area, computed in closed form (no sampling, no rounding). Corners are
    ``x * spatial_scale`` with no half-cell shift; a box with ``x2 <= x1`` or
    ``y2 <= y1`` (after scaling) gives zeros. See ``docs/semantics.md`` (prroi_pool).

    Args:
        input (ndarray or Tensor[N, C, H, W]): the feature map, floating
            (float16 is computed in float32).
        boxes (ndarray or Tensor[K, 5], or list of N arrays [L_i, 4]): boxes in
            input-image coordinates, rows ``[batch_index, x1, y1, x2, y2]``, or
            per image ``[x1, y1, x2, y2]``.
        output_size (int or (int, int)): ``(pooled_h, pooled_w)``.
        spatial_scale (float): image-to-feature-map factor (1/16 for a stride-16 map).
        layout ("nchw" or "nhwc"): NumPy only; ``"nhwc"`` takes and returns
            channels-last arrays, ``(N, H, W, C)`` in and ``(K, pooled_h, pooled_w, C)``
            out, with the same values bit for bit. A tensor's memory format
            decides instead: a ``torch.channels_last`` map gives a channels-last
            output (and input gradient).

    Returns:
        ndarray or Tensor[K, C, pooled_h, pooled_w] of the input's dtype. A
        tensor result is differentiable with respect to ``input`` and to the
        box coordinates (``boxes`` tensors that require grad).
    """
    if _is_tensor(input):
        from . import torch as torch_frontend  # torch-only functions: scriptable, FX leaves

        _tensor_layout(layout)
        return torch_frontend.prroi_pool(input, boxes, output_size, spatial_scale)
    _layout = _frontend("_layout")
    _prroi = _frontend("prroi_pool")

    nhwc = _nhwc(layout)
    out = _prroi.prroi_pool(_layout.map_in(input, nhwc, "input"), boxes, output_size, spatial_scale, nhwc)
    return _layout.map_out(out, nhwc)


def prroi_pool_backward(grad_output, boxes, input_shape, output_size, spatial_scale=1.0, *, layout="nchw"):
    """Gradient of :func:`prroi_pool` with respect to ``input`` (NumPy).

    ``grad_output (K, C, pooled_h, pooled_w)`` with the ``boxes``,
    ``output_size`` and ``spatial_scale`` of the forward call; returns an array
    of ``input_shape`` ``(N, C, H, W)`` in ``grad_output``'s dtype. Each
    output's gradient goes to every cell its bin's integral reads, by the same
    weight. Deterministic: the result does not depend on the thread count.

    ``layout="nhwc"``: every array and shape channels-last, as in :func:`prroi_pool`.
    """
    _layout = _frontend("_layout")
    _prroi = _frontend("prroi_pool")

    nhwc = _nhwc(layout)
    grad = _prroi.prroi_pool_backward(
        _layout.pooled_in(grad_output, nhwc, "grad_output"),
        boxes,
        _layout.shape_in(input_shape, nhwc),
        output_size,
        spatial_scale,
        nhwc,
    )
    return _layout.map_out(grad, nhwc)


def prroi_pool_boxes_backward(grad_output, input, boxes, output_size, spatial_scale=1.0, *, layout="nchw"):
    """Gradient of :func:`prroi_pool` with respect to the box coordinates (NumPy).

    ``grad_output (K, C, pooled_h, pooled_w)``; ``input``, ``boxes``,
    ``output_size`` and ``spatial_scale`` as in the forward call. Returns the
    gradient in the form of ``boxes``, in ``input``'s dtype: ``(K, 5)`` whose
    column 0 (the batch index) is 0, or a list of ``(L_i, 4)`` arrays. The
    derivative of each bin with respect to its edges is exact (closed form);
    a box with zero width or height has zero gradient. Deterministic.

    ``layout="nhwc"``: every array and shape channels-last, as in :func:`prroi_pool`.
    """
    _layout = _frontend("_layout")
    _prroi = _frontend("prroi_pool")

    nhwc = _nhwc(layout)
    return _prroi.prroi_pool_boxes_backward(
        _layout.pooled_in(grad_output, nhwc, "grad_output"),
        _layout.map_in(input, nhwc, "input"),
        boxes,
        output_size,
        spatial_scale,
    )


def set_num_threads(n: int) -> None:
    """Run the CPU kernels on ``n`` threads (1 to ``NUMBA_NUM_THREADS``), from every Python thread.

    Independent of ``torch.set_num_threads``.
    """
    from .cpu import _parallel

    _parallel.set_threads(n)


def get_num_threads() -> int:
    """Threads the CPU kernels run on (default ``NUMBA_NUM_THREADS``, all the cores this process may use)."""
    from .cpu import _parallel

    return _parallel.threads()


def set_memory_cache(max_bytes: int) -> int:
    """Keep up to ``max_bytes`` of freed large outputs for later calls to reuse; returns the previous limit.

    Outputs (and the kernels' own copies of a map) of 4 MiB or more come from
    this cache, and go back to it once the caller drops every array or
    tensor that views them: a loop that calls an op again and again then
    writes into memory that is already mapped, instead of faulting in fresh
    pages every call (the ``maskrcnn`` channels-last ``roi_align`` forward: 25.2 -> 16.9 ms,
    ``docs/benchmarks.md``). The default is 1 GiB, or 1/16 of the machine's
    memory where that is less, or ``$ROIPOOL_MEMORY_CACHE`` bytes; ``0``
    frees what is kept and keeps nothing. Memory still in use is never
    reused.
    """
    from .cpu import _pool

    return _pool.set_limit(max_bytes)


def get_memory_cache() -> tuple[int, int]:
    """``(limit, held)``: the bytes :func:`set_memory_cache` allows, and the bytes of freed outputs kept now."""
    from .cpu import _pool

    return _pool.limit(), _pool.held()
