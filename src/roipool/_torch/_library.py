"""TEMP shim: the names ``_torch/<op>.py`` modules import, re-exported from ``.._torch_ops``.

Drop this file when merging: the restructuring branch brings the real
``_torch/_library.py``.
"""

from .._torch_ops import _quiet_when_tracing as quiet_when_tracing
from .._torch_ops import boxes_to_rois, check_feature_map, compute_dtype, cpu_rois, define, needs_grad, new_cpu_tensor

__all__ = [
    "boxes_to_rois",
    "check_feature_map",
    "compute_dtype",
    "cpu_rois",
    "define",
    "needs_grad",
    "new_cpu_tensor",
    "quiet_when_tracing",
]
