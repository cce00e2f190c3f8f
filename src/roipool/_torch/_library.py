"""TEMP shim: the names ``_torch/<op>.py`` modules import, re-exported from ``.._torch_ops``.

Drop this file when merging: the restructuring branch brings the real
``_torch/_library.py``.
"""

from .._torch_ops import (  # noqa: F401
    _quiet_when_tracing as quiet_when_tracing,
)
