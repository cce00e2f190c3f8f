"""``cpu._tiles.channels_last_copy``: the parallel NCHW -> NHWC copy the roi_pool paths read their map through."""

from __future__ import annotations

import numpy as np
import pytest

from roipool.cpu._tiles import channels_last_copy


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "shape",
    [
        (2, 147, 9, 11),
        (1, 16, 4, 4),
        (3, 5, 1, 1),
        (1, 1, 7, 3),
        (2, 33, 17, 1),
        (0, 4, 3, 3),
        (2, 4, 0, 5),
        (2, 256, 9, 31),
        (1, 40, 33, 50),
    ],
)
def test_channels_last_copy_is_the_transpose(shape, dtype):
    """Whole 16 x 16 register blocks, ragged channel and cell counts, one channel, empty arrays,
    and maps of several tasks of cells each with a ragged last one (``copy_cells``)."""
    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    before = x.copy()
    got = channels_last_copy(x)
    assert got.dtype == dtype and got.shape == (shape[0], shape[2], shape[3], shape[1]) and got.flags.c_contiguous
    np.testing.assert_array_equal(got, x.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(x, before)  # the input is only read


def test_channels_last_copy_converts_and_takes_any_strides():
    x = np.random.default_rng(1).standard_normal((2, 6, 5, 7))
    np.testing.assert_array_equal(channels_last_copy(x, np.float32), x.transpose(0, 2, 3, 1).astype(np.float32))
    strided = x[:, ::2, :, ::3]
    np.testing.assert_array_equal(channels_last_copy(strided), strided.transpose(0, 2, 3, 1))
    half = x.astype(np.float16)
    assert channels_last_copy(half, np.float32).dtype == np.float32
