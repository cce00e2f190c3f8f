"""FX tracing of roipool's public torch functions and layers (``torch.fx.symbolic_trace``, feature extraction).

A traced call of a public function (``roipool.torch.<op>``, hence also
``roipool.<op>`` and ``roipool.nn.<op>``) is recorded as one ``call_function``
node of that function, and a layer held by the traced model as one
``call_module`` node, whichever ``torch.fx.Tracer`` traces (the default one,
torchvision's feature-extraction tracer, FX quantization's). Neither needs the
tracer's cooperation (``torch.fx.wrap`` patches only the globals of the module
that calls it, and ``Tracer.is_leaf_module`` is the tracer's choice): the
function or the layer notices the ``torch.fx.Proxy`` among its arguments and
records itself. Executing the traced ``GraphModule`` calls the function or the
layer again, with tensors.
"""

from __future__ import annotations

import torch
import torch.fx


def _find_proxy(value):
    """The first ``torch.fx.Proxy`` in ``value`` (a proxy, or a list/tuple/dict holding some), else None."""
    if isinstance(value, torch.fx.Proxy):
        return value
    if isinstance(value, (list, tuple)):
        items = value
    elif isinstance(value, dict):
        items = value.values()
    else:
        return None
    for item in items:
        found = _find_proxy(item)
        if found is not None:
            return found
    return None


def fx_function_call(fn, *args):
    """The node ``fn(*args)`` when an FX tracer is tracing this call (a proxy in ``args``), else None."""
    proxy = _find_proxy(args)
    if proxy is None:
        return None
    return proxy.tracer.create_proxy("call_function", fn, args, {})


def fx_module_call(module: torch.nn.Module, *args):
    """The ``call_module`` node of ``module(*args)`` when an FX tracer traces it, else None.

    None too when ``module`` is the root being traced (a graph cannot call its
    own root): the layer is then traced through, and its functional op is the
    leaf.
    """
    proxy = _find_proxy(args)
    if proxy is None:
        return None
    tracer = proxy.tracer
    if getattr(tracer, "root", None) is module:
        return None
    try:
        path = tracer.path_of_module(module)
    except NameError:  # a layer made during tracing, not held by the traced model
        return None
    return tracer.create_proxy("call_module", path, args, {})
