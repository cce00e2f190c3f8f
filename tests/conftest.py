"""Every test runs the CPU kernels in all the parts a large call gets, however small its input.

Users' small calls run on the calling thread alone (``cpu/_parallel.GRAIN``), and mid-size ones in
one part per thread (``PART_VALUES``); the tests' inputs are mostly that small, and they must still
check that the parts of a kernel add up to the whole.
"""

import pytest


@pytest.fixture(autouse=True, scope="session")
def _small_work_in_parts():
    from roipool.cpu import _parallel

    grain, _parallel.GRAIN = _parallel.GRAIN, 0
    part_values, _parallel.PART_VALUES = _parallel.PART_VALUES, 1
    yield
    _parallel.GRAIN, _parallel.PART_VALUES = grain, part_values
