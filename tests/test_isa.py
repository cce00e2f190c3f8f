"""The kernels compiled for AVX2 give the bits they give compiled for AVX-512.

Some choices are made by the instructions the kernels are compiled for
(``cpu/_machine.avx512``): on AVX2 a short gather sums an eight-vector block in
two four-vector passes (``cpu/roi_align.TWO_PASSES_UP_TO``), which an AVX-512
machine never compiles. And a sum the compiler may reassociate is vectorised
in the CPU's vector width: ``roi_align``'s box gradient was, and differed in its
last bits between the two (``cpu/roi_align._dot4``). An AVX-512 machine can
compile and run the AVX2 code (``NUMBA_CPU_FEATURES``), so there both are
compared here; an AVX2-only machine cannot run the AVX-512 code, and skips this.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import roipool
from roipool.cpu import _machine

pytestmark = pytest.mark.skipif(not _machine.avx512(), reason="needs a CPU that runs AVX-512 code")

CASE = textwrap.dedent(
    """
    import sys

    import numpy as np

    import roipool
    from roipool.cpu import _machine


    def outputs():
        rng = np.random.default_rng(3)
        x = rng.standard_normal((2, 150, 23, 29)).astype(np.float32)  # a 128-channel block and a tail
        boxes = np.concatenate([rng.integers(0, 2, (40, 1)), rng.uniform(-20, 250, (40, 4))], 1)
        boxes[:, 3:] = np.maximum(boxes[:, 3:], boxes[:, 1:3])
        boxes = boxes.astype(np.float32)
        out = []
        for layout in ("nchw", "nhwc"):
            xi = x if layout == "nchw" else np.ascontiguousarray(x.transpose(0, 2, 3, 1))
            for ratio in (1, 2, -1):  # 4, 16 and, on the larger bins, more taps a bin
                y = roipool.roi_align(xi, boxes, 5, 0.125, ratio, True, layout=layout)
                out.append(y)
                g = np.random.default_rng(ratio + 5).standard_normal(y.shape).astype(np.float32)
                out.append(roipool.roi_align_backward(g, boxes, xi.shape, 5, 0.125, ratio, True, layout=layout))
                out.append(roipool.roi_align_boxes_backward(g, xi, boxes, 5, 0.125, ratio, True, layout=layout))
            out.append(roipool.roi_pool(xi, boxes, 5, 0.125, layout=layout))
        return out


    if __name__ == "__main__":
        np.savez(sys.argv[1], *outputs(), avx512=_machine.avx512())
    """
)


def test_the_avx2_kernels_give_the_bits_of_the_avx512_kernels(tmp_path):
    script = tmp_path / "case.py"
    script.write_text(CASE)
    env = dict(
        os.environ, NUMBA_CPU_FEATURES=_machine.features_without_avx512(), NUMBA_CACHE_DIR=str(tmp_path / "cache")
    )
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(roipool.__file__)), env.get("PYTHONPATH", "")])
    saved = tmp_path / "avx2.npz"
    subprocess.run([sys.executable, str(script), str(saved)], env=env, check=True, timeout=600)
    avx2 = np.load(saved)
    assert not avx2["avx512"]  # the child compiled for AVX2

    namespace: dict = {}
    exec(compile(CASE, str(script), "exec"), namespace)
    here = namespace["outputs"]()
    assert len(here) == len(avx2.files) - 1
    for i, expected in enumerate(here):
        np.testing.assert_array_equal(avx2[f"arr_{i}"], expected, err_msg=f"output {i}")
