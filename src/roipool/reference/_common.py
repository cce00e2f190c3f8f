"""Rules every reference op shares: C rounding and the bilinear interpolant."""

from __future__ import annotations

import math


def c_round(v):
    """Round half away from zero, as C's ``round`` does (clamped to +-2**30)."""
    # Written out with the exact fractional part: floor(|v| + 0.5) would round
    # 0.49999997 up, since the addition itself rounds.
    a = math.floor(abs(v))
    if abs(v) - a >= 0.5:
        a += 1
    a = min(a, 2**30)
    return a if v >= 0 else -a


def bilinear_taps(y, x, height, width):
    """The four ``(row, col, weight)`` taps of a bilinear sample at ``(y, x)``.

    A sample more than one cell outside the map (``y < -1``, ``y > H``,
    ``x < -1`` or ``x > W``) reads nothing (empty list). Otherwise a
    coordinate ``<= 0`` reads as 0 and one at or past the last cell reads the
    last cell, so samples within a cell of the border take the border's value.
    """
    t = type(y)
    if y < -1 or y > height or x < -1 or x > width:
        return []
    if y <= 0:
        y = t(0)
    if x <= 0:
        x = t(0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_low = y_high = height - 1
        y = t(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_low = x_high = width - 1
        x = t(x_low)
    else:
        x_high = x_low + 1
    ly = t(y - t(y_low))
    lx = t(x - t(x_low))
    hy = t(t(1) - ly)
    hx = t(t(1) - lx)
    return [
        (y_low, x_low, t(hy * hx)),
        (y_low, x_high, t(hy * lx)),
        (y_high, x_low, t(ly * hx)),
        (y_high, x_high, t(ly * lx)),
    ]
