"""Every test runs the CPU kernels in as many parts as there are threads, however small its input.

Users' small calls run on the calling thread alone (``cpu/_parallel.GRAIN``); the tests' inputs are
mostly that small, and they must still check that the parts of a kernel add up to the whole.
"""

import pytest


@pytest.fixture(autouse=True, scope="session")
def _small_work_in_parts():
    from roipool.cpu import _parallel

    grain, _parallel.GRAIN = _parallel.GRAIN, 0
    yield
    _parallel.GRAIN = grain
