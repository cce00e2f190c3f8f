"""RoI max pooling on the CPU: forward with and without argmax, and backward.

Layout: the feature map arrives channels-last ``(N, H, W, C)`` so that the
inner loop runs over ``C`` contiguously and vectorises; each run of RoIs
pools into a per-thread ``(bins, C)`` buffer that is then written into the
caller's ``(K, C, pooled_h, pooled_w)`` output. Bin edges come from
``_geometry.roi_pool_bins``. Runs of RoIs (``bounds``) are balanced by cost.

The maximum is strict (``>``, first in row-major scan order wins) and NaN
wins over numbers: once a NaN is seen the bin keeps it. Empty bins give 0
and argmax -1.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(parallel=True, cache=True, nogil=True)
def forward(x, batch, hbins, wbins, bounds, out):
    """``out (K, C, PH * PW)`` <- bin maxima of ``x (N, H, W, C)``; no argmax."""
    channels = x.shape[3]
    pooled_h = hbins.shape[1]
    pooled_w = wbins.shape[1]
    nbins = pooled_h * pooled_w
    for run in numba.prange(bounds.shape[0] - 1):
        buf = np.empty((nbins, channels), x.dtype)
        for k in range(bounds[run], bounds[run + 1]):
            n = batch[k]
            for ph in range(pooled_h):
                h0 = hbins[k, ph, 0]
                h1 = hbins[k, ph, 1]
                for pw in range(pooled_w):
                    w0 = wbins[k, pw, 0]
                    w1 = wbins[k, pw, 1]
                    m = buf[ph * pooled_w + pw]
                    if h1 <= h0 or w1 <= w0:
                        m[:] = 0
                        continue
                    m[:] = -np.inf
                    for h in range(h0, h1):
                        for w in range(w0, w1):
                            v = x[n, h, w]
                            for c in range(channels):
                                a = v[c]
                                b = m[c]
                                m[c] = a if (a > b or (a != a and b == b)) else b
            _scatter(buf, out[k])


@numba.njit(parallel=True, cache=True, nogil=True)
def forward_argmax(x, batch, hbins, wbins, bounds, out, argmax):
    """As :func:`forward`, also writing ``argmax (K, C, PH * PW)``: ``h * W + w`` or -1."""
    width = x.shape[2]
    channels = x.shape[3]
    pooled_h = hbins.shape[1]
    pooled_w = wbins.shape[1]
    nbins = pooled_h * pooled_w
    for run in numba.prange(bounds.shape[0] - 1):
        buf = np.empty((nbins, channels), x.dtype)
        ibuf = np.empty((nbins, channels), np.int32)
        for k in range(bounds[run], bounds[run + 1]):
            n = batch[k]
            for ph in range(pooled_h):
                h0 = hbins[k, ph, 0]
                h1 = hbins[k, ph, 1]
                for pw in range(pooled_w):
                    w0 = wbins[k, pw, 0]
                    w1 = wbins[k, pw, 1]
                    m = buf[ph * pooled_w + pw]
                    im = ibuf[ph * pooled_w + pw]
                    if h1 <= h0 or w1 <= w0:
                        m[:] = 0
                        im[:] = -1
                        continue
                    m[:] = -np.inf
                    im[:] = h0 * width + w0
                    for h in range(h0, h1):
                        for w in range(w0, w1):
                            v = x[n, h, w]
                            idx = np.int32(h * width + w)
                            for c in range(channels):
                                a = v[c]
                                b = m[c]
                                take = a > b or (a != a and b == b)
                                m[c] = a if take else b
                                im[c] = idx if take else im[c]
            _scatter(buf, out[k])
            _scatter(ibuf, argmax[k])


@numba.njit(cache=True, nogil=True, inline="always")
def _scatter(buf, dst):
    """``dst (C, B)`` <- ``buf (B, C)``, the transpose of one RoI's results."""
    nbins, channels = buf.shape
    for c in range(channels):
        for b in range(nbins):
            dst[c, b] = buf[b, c]


@numba.njit(parallel=True, cache=True, nogil=True)
def backward(grad_out, argmax, batch, grad_in):
    """``grad_in (N, C, H * W)`` += ``grad_out (K, C, B)`` routed through ``argmax``.

    Threads split the channels, so each owns the planes it writes: no atomics,
    and the sum over RoIs always runs in ascending RoI order (deterministic).
    """
    k_total, channels, nbins = grad_out.shape
    for c in numba.prange(channels):
        for k in range(k_total):
            plane = grad_in[batch[k], c]
            g = grad_out[k, c]
            a = argmax[k, c]
            for b in range(nbins):
                i = a[b]
                if i >= 0:
                    plane[i] += g[b]
