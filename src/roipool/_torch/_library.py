"""TEMP shim: the names of the torch machinery, re-exported from ``_torch_ops`` until the
restructuring branch brings the real ``_torch/_library.py``. The lead drops this file when merging."""

from .._torch_ops import (  # noqa: F401
    SUPPORTED_DTYPES,
    check_feature_map,
    compute_dtype,
    define,
    needs_grad,
    new_cpu_tensor,
)
from .._torch_ops import _quiet_when_tracing as quiet_when_tracing  # noqa: F401
