"""Hand-run parity check of roi_pool against torchvision and ONNX Runtime.

Needs the peer environment (``../shared/make-peer-venv.sh``, plus pytest for
the ONNX Runtime helper). Run from the project root:
``python benchmarks/parity_roi_pool.py``. Prints the counts quoted in
docs/semantics.md ("Verification against the peers").
"""

from __future__ import annotations

import sys

sys.path[:0] = ["src", "."]

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from tests.helpers import random_rois  # noqa: E402
from tests.ort_oracle import max_roi_pool  # noqa: E402

import roipool  # noqa: E402


def random_case(rng, case):
    n, c = int(rng.integers(1, 4)), int(rng.integers(1, 9))
    h, w = int(rng.integers(1, 30)), int(rng.integers(1, 30))
    scale = float(rng.choice([1.0, 0.5, 0.25, 0.125, 1 / 16, 0.3, 2.0]))
    size = (int(rng.integers(1, 8)), int(rng.integers(1, 8)))
    dtype = (np.float32, np.float64)[case % 2]
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    if case % 3 == 0:
        x = np.round(x)  # ties, -0.0 against 0.0 among them
    rois = random_rois(rng, 50, n, h, w, scale)
    rois[::3, 1:] = (np.round(rois[::3, 1:] * scale * 2) + 1) / 2 / scale  # half-way after scaling
    return x, rois.astype(dtype), size, scale


def main(cases: int = 300, seed: int = 2026) -> None:
    rng = np.random.default_rng(seed)
    values = grads = ort_values = 0
    differ = grad_differ = ort_bits = ort_value = 0
    for case in range(cases):
        x, rois, size, scale = random_case(rng, case)
        rois_t = torch.from_numpy(rois)
        peer_in = torch.from_numpy(x).requires_grad_(True)
        peer = torchvision.ops.roi_pool(peer_in, rois_t, size, scale)
        grad_out = torch.from_numpy(rng.standard_normal(peer.shape).astype(x.dtype))
        (peer_grad,) = torch.autograd.grad(peer, peer_in, grad_out)
        ours_in = torch.from_numpy(x).requires_grad_(True)
        ours = roipool.roi_pool(ours_in, rois_t, size, scale)
        (ours_grad,) = torch.autograd.grad(ours, ours_in, grad_out)
        ours_np = roipool.roi_pool(x, rois, size, scale)
        values += peer.numel()
        grads += ours_grad.numel()
        peer_bytes = peer.detach().numpy().tobytes()
        differ += (peer_bytes != ours.detach().numpy().tobytes()) + (peer_bytes != ours_np.tobytes())
        # the gradient three ways: torch autograd, NumPy from the argmax, NumPy finding the maxima again
        g = grad_out.numpy()
        _, argmax = roipool.roi_pool_with_argmax(x, rois, size, scale)
        numpy_grads = (
            roipool.roi_pool_backward(g, argmax, rois, x.shape),
            roipool.roi_pool_backward(g, None, rois, x.shape, input=x, spatial_scale=scale),
        )
        peer_grad_bytes = peer_grad.numpy().tobytes()
        grad_differ += (ours_grad.numpy().tobytes() != peer_grad_bytes) + sum(
            ng.tobytes() != peer_grad_bytes for ng in numpy_grads
        )
        if x.dtype == np.float32:
            ort = max_roi_pool(x, rois, *size, scale)
            ort_values += ort.size
            ort_bits += ort.tobytes() != ours_np.tobytes()
            ort_value += not np.array_equal(ort, ours_np)
    print(f"{cases} cases: {values} output values, {grads} gradient elements")
    print(
        f"torchvision: differences in values {differ} (of 2 paths per case), in gradients {grad_differ} (of 3 routes per case)"
    )
    print(f"ONNX Runtime (float32, {ort_values} values): cases differing in bits {ort_bits}, in value {ort_value}")


if __name__ == "__main__":
    main()
