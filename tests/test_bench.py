"""``roipool bench``: the pyramid workload, the floors, and a clear refusal of a missing GPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from roipool import bench

torch = pytest.importorskip("torch")


def test_a_pyramid_workload_times_multi_scale_roi_align_both_ways_at_each_output_size(monkeypatch):
    small = bench.PyramidWorkload("fpn-smoke", "two images, 64x96", 2, 4, 64, 96, 6, (3, 5), devices=("cpu",))
    monkeypatch.setitem(bench.PYRAMID_WORKLOADS, small.name, small)
    rows = bench.run([small.name], repeat=1)
    ours = {(r.op, r.mode) for r in rows if r.impl == "roipool (torch)"}
    assert ours == {
        (f"multi_scale_roi_align {s}x{s}", mode) for s in (3, 5) for mode in ("forward", "forward+backward")
    }
    assert all(r.median_ms > 0 and r.floor_ms is None for r in rows)  # floors need a measured GPU bandwidth


def test_pyramid_workload_maps_follow_the_strides_and_boxes_stay_inside_the_image():
    maps, boxes = bench.PyramidWorkload("x", "", 2, 3, 800, 1088, 5, (7,)).make()
    assert [m.shape for m in maps.values()] == [(2, 3, 200, 272), (2, 3, 100, 136), (2, 3, 50, 68), (2, 3, 25, 34)]
    assert len(boxes) == 2 and all(b.shape == (5, 4) for b in boxes)
    for b in boxes:
        assert (b[:, 0] >= 0).all() and (b[:, 2] <= 1088).all() and (b[:, 1] >= 0).all() and (b[:, 3] <= 800).all()


def test_floor_counts_the_output_and_for_a_training_step_the_gradients():
    assert bench.floor_bytes(map_bytes=10, output_bytes=3, mode="forward") == 3
    assert bench.floor_bytes(map_bytes=10, output_bytes=3, mode="forward+backward") == 2 * 3 + 10


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_bench_on_cuda_without_a_gpu_says_so_in_one_line():
    result = subprocess.run(
        [sys.executable, "-m", "roipool.cli", "bench", "--device", "cuda", "--workload", "tiny"],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert (
        result.stderr.strip()
        == "roipool bench: --device cuda needs torch and a GPU it can see (torch.cuda.is_available())"
    )


GPU_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu"


def test_the_gpu_check_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(GPU_DIR / "check.sh")], check=True)


def test_the_gpu_summary_reports_steps_tests_memory_and_floors_and_says_what_is_missing(tmp_path):
    (tmp_path / "steps.txt").write_text("environment exit=0 seconds=3\ntests exit=0 seconds=80\n")
    (tmp_path / "tests.xml").write_text(
        '<testsuites><testsuite tests="3" failures="1" errors="0" skipped="1">'
        '<testcase classname="tests.test_gpu" name="test_a"/>'
        '<testcase classname="tests.test_gpu" name="test_b"><failure message="x"/></testcase>'
        '<testcase classname="tests.test_gpu" name="test_c"><skipped/></testcase>'
        "</testsuite></testsuites>"
    )
    record = {"roipool": {"peak_extra_bytes": 5_000_000, "grad_input_bytes": 4_000_000}}
    (tmp_path / "backward_memory_roi_align.json").write_text(json.dumps(record))
    subprocess.run([sys.executable, str(GPU_DIR / "summarize.py"), str(tmp_path)], check=True)
    summary = (tmp_path / "summary.md").read_text()
    assert "tests exit=0 seconds=80" in summary
    assert "tests: 1 passed, 1 failed, 1 skipped" in summary and "FAILED tests.test_gpu::test_b" in summary
    assert "roi_align: roipool 5.0 MB" in summary
    assert "no readable bench.json" in summary


def test_channels_last_workloads_hold_the_same_values_in_nhwc_memory():
    """``roipool bench --channels-last``: each map is the NCHW workload's values, laid out (N, H, W, C)."""
    import dataclasses

    for workload in (bench.WORKLOADS["tiny"], bench.WORKLOADS["dota"]):
        x, rois = workload.make()
        xc, rc = dataclasses.replace(workload, channels_last=True).make()
        np.testing.assert_array_equal(xc, x)
        np.testing.assert_array_equal(rc, rois)
        assert xc.transpose(0, 2, 3, 1).flags.c_contiguous and not xc.flags.c_contiguous
        assert torch.from_numpy(xc).is_contiguous(memory_format=torch.channels_last)
    small = dataclasses.replace(bench.PYRAMID_WORKLOADS["maskrcnn-fpn"], images=1, channels=3, image_h=64, image_w=64)
    maps, _ = dataclasses.replace(small, channels_last=True).make()
    for name, m in maps.items():
        np.testing.assert_array_equal(m, small.make()[0][name])
        assert torch.from_numpy(m).is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("op", ["roi_pool", "roi_align"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_openvino_is_a_checked_peer_of_roi_pool_and_roi_align(op, channels_last):
    """OpenVINO's ``ROIPooling`` and ``ROIAlign`` are timed when importable, after their values
    were checked against roipool's (the check passes on this workload: the candidate is listed)."""
    import dataclasses

    pytest.importorskip("openvino")
    import roipool
    from roipool.bench.candidates import candidates

    workload = dataclasses.replace(bench.WORKLOADS["small-batch"], channels_last=channels_last)
    (peer,) = [c for c in candidates(workload, op, "forward") if c.impl == "openvino"]
    x, rois = workload.make()
    size, scale = workload.output_size, workload.spatial_scale
    if op == "roi_pool":
        want = roipool.roi_pool(x, rois, size, scale)
    else:
        want = roipool.roi_align(x, rois, size, scale, workload.sampling_ratio, workload.aligned)
    np.testing.assert_allclose(next(iter(peer.run().values())), want, rtol=1e-5, atol=1e-5)


def test_timing_waits_for_threads_still_spinning_after_the_previous_call():
    """``measure`` starts each CPU timing only once the process's other threads are idle."""
    import threading
    import time

    from roipool.bench import _quiesce

    start = time.perf_counter()
    _quiesce()
    assert time.perf_counter() - start < 0.9  # idle: one 20 ms window or a few, not the 1 s limit

    def spin():
        end = time.perf_counter() + 0.3
        while time.perf_counter() < end:
            pass

    spinner = threading.Thread(target=spin)
    spinner.start()
    start = time.perf_counter()
    _quiesce()
    waited = time.perf_counter() - start
    spinner.join()
    assert waited >= 0.2


@pytest.mark.parametrize("channels_last", [False, True])
def test_prroi_pool_candidates_run_in_either_memory_format(channels_last):
    """A channels-last workload gives prroi_pool NHWC arrays (``layout="nhwc"``) and channels_last tensors."""
    import dataclasses

    from roipool.bench.candidates import candidates

    workload = dataclasses.replace(bench.WORKLOADS["tiny"], channels_last=channels_last)
    x, rois = workload.make()
    k, c, size = len(rois), workload.channels, workload.output_size
    (numpy_forward, _) = candidates(workload, "prroi_pool", "forward")
    assert numpy_forward.run().shape == ((k, size, size, c) if channels_last else (k, c, size, size))
    for candidate in candidates(workload, "prroi_pool", "forward+backward"):
        grad_input, grad_boxes = candidate.run()
        assert tuple(grad_boxes.shape) == rois.shape
        assert int(np.prod(grad_input.shape)) == x.size


def test_cpu_name_says_family_model_and_vector_width():
    """The bench names the CPU of every figure: an AVX2-only EPYC and one with AVX-512 report the same name."""
    amd = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\n"
    amd += "flags\t\t: fpu sse2 avx avx2 fma\n\nprocessor\t: 1\nmodel name\t: other\n"
    assert bench._cpu_name(amd) == "AMD EPYC (family 25, model 17, AVX2)"
    intel = amd.replace("AMD EPYC", "Intel(R) Xeon(R) Processor @ 2.50GHz").replace("fma\n", "fma avx512f avx512bw\n")
    assert bench._cpu_name(intel).endswith("(family 25, model 17, AVX-512)")
    assert bench._cpu_name("model name\t: Some CPU\n") == "Some CPU"


def test_machine_names_the_cache_sizes_the_kernels_choose_by(monkeypatch):
    """The L2 and L3 the kernels read (``cpu/_machine.py``), which may differ from what ``/sys`` says."""
    from roipool.cpu import _machine

    monkeypatch.setenv("ROIPOOL_L2_BYTES", str(1 << 20))
    monkeypatch.setenv("ROIPOOL_L3_BYTES", str(36 << 20))
    _machine.l2_bytes.cache_clear()
    _machine.l3_bytes.cache_clear()
    try:
        info = bench.machine()
    finally:
        _machine.l2_bytes.cache_clear()
        _machine.l3_bytes.cache_clear()
    assert (info["roipool_l2"], info["roipool_l3"]) == ("1024 KiB", "36 MiB")


def test_calls_back_to_back_are_timed_together_and_reported_per_call():
    import time

    from roipool.bench import Candidate, measure

    ran = []

    def run():
        ran.append(None)
        time.sleep(0.01)

    times = measure([Candidate("sleeper", run, True)], repeat=3, warmup=1, calls=5)
    assert len(ran) == 1 + 3 * 5
    # each repeat is the mean of its five calls: about 10 ms, not their 50 ms sum
    assert len(times["sleeper"]) == 3 and all(10 <= t < 45 for t in times["sleeper"])


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--calls", "0"], "roipool bench: --calls must be at least 1"),
        (["--calls", "5", "--device", "cuda"], "roipool bench: --calls is for CPU timings (CUDA events time one call)"),
    ],
)
def test_bench_refuses_a_bad_call_count_in_one_line(extra, message):
    result = subprocess.run(
        [sys.executable, "-m", "roipool.cli", "bench", "--workload", "tiny", *extra], capture_output=True, text=True
    )
    assert result.returncode != 0
    assert result.stderr.strip() == message
