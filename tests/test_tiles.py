"""``cpu._tiles``: the parallel NCHW -> NHWC copy the roi_pool paths read their map through, and the
in-place turn of a swept channels-last output into NCHW."""

from __future__ import annotations

import numpy as np
import pytest

from roipool.cpu._tiles import channels_first_in_place, channels_last_copy


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


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32])
@pytest.mark.parametrize(
    "shape", [(3, 196, 256), (40, 49, 19), (2, 16, 16), (5, 1, 7), (4, 9, 1), (1, 17, 33), (0, 4, 4)]
)
def test_channels_first_in_place_leaves_each_item_transposed(shape, dtype):
    """Whole register blocks and ragged edges, one row or one channel, more items than tasks and
    fewer. The values (any bit pattern: NaN payloads, the argmax's int32) move, never change."""
    bits = np.dtype(f"u{np.dtype(dtype).itemsize}")
    a = np.random.default_rng(2).integers(0, np.iinfo(bits).max, shape, bits, endpoint=True).view(dtype)
    want = a.transpose(0, 2, 1).copy()
    channels_first_in_place(a)
    assert a.shape == shape and a.tobytes() == want.tobytes()
