"""The CPU kernels' threads (``cpu/_parallel.py``): how the work is cut, launched and sized."""

import multiprocessing
import threading
import time

import numba
import numpy as np
import pytest

import roipool
from roipool.cpu import _parallel
from roipool.cpu._parallel import launch, share

from .helpers import random_rois


@numba.njit(nogil=True)
def _count_items(counts, part, parts):
    for i in share(counts.shape[0], part, parts):
        counts[i] += 1
    return len(share(counts.shape[0], part, parts))


MANY = 1 << 40  # values enough for every part a launch can have


@pytest.fixture
def two_threads():
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("NUMBA_NUM_THREADS is 1 here")
    before = roipool.get_num_threads()
    roipool.set_num_threads(2)
    yield
    roipool.set_num_threads(before)


@pytest.mark.parametrize("n", [0, 1, 2, 7, 16, 1001])
@pytest.mark.parametrize("parts", [1, 2, 3, 8])
def test_share_gives_each_item_to_exactly_one_part_in_runs_of_about_equal_length(n, parts):
    counts = np.zeros(n, np.int64)
    sizes = [_count_items(counts, part, parts) for part in range(parts)]
    np.testing.assert_array_equal(counts, np.ones(n, np.int64))
    assert max(sizes) - min(sizes) <= 1
    starts = np.cumsum([0] + sizes[:-1])
    for part, start in enumerate(starts):  # contiguous and in order: part p starts where p - 1 ended
        probe = np.zeros(n, np.int64)
        _count_items(probe, part, parts)
        assert np.flatnonzero(probe).tolist() == list(range(start, start + sizes[part]))


def test_launch_runs_every_part_once_and_returns_their_results_in_order(two_threads):
    parts = 2 * _parallel.PARTS_PER_THREAD
    counts = np.zeros(1001, np.int64)
    assert sum(launch(_count_items, counts, values=MANY)) == 1001
    np.testing.assert_array_equal(counts, 1)
    assert launch(lambda part, parts: (part, parts), values=MANY) == [(p, parts) for p in range(parts)]


def test_launch_runs_small_work_on_the_calling_thread_alone(two_threads, monkeypatch):
    monkeypatch.setattr(_parallel, "GRAIN", 32768)  # the suite sets it to 0 (conftest.py)
    caller = threading.get_ident()
    assert launch(lambda part, parts: (part, parts, threading.get_ident()), values=32767) == [(0, 1, caller)]
    assert len(launch(lambda part, parts: part, values=MANY)) == 2 * _parallel.PARTS_PER_THREAD


def test_launch_uses_no_more_threads_and_parts_than_the_kernel_has_tasks(two_threads):
    caller = threading.get_ident()
    for tasks in (0, 1):
        assert launch(lambda part, parts: (part, parts, threading.get_ident()), values=MANY, tasks=tasks) == [
            (0, 1, caller)
        ]
    assert launch(lambda part, parts: (part, parts), values=MANY, tasks=3) == [(0, 3), (1, 3), (2, 3)]
    assert len(launch(lambda part, parts: part, values=MANY, tasks=1000)) == 2 * _parallel.PARTS_PER_THREAD
    counts = np.zeros(5, np.int64)
    assert sum(launch(_count_items, counts, values=MANY, tasks=2)) == 5  # a low count loses no item
    np.testing.assert_array_equal(counts, 1)


def test_launch_gives_each_part_at_least_part_values_but_each_thread_one(two_threads, monkeypatch):
    monkeypatch.setattr(_parallel, "PART_VALUES", 1000)  # the suite sets it to 1 (conftest.py)
    parts = [len(launch(lambda part, parts: part, values=v)) for v in (0, 3999, 4000, 5999, 6000, 8000, MANY)]
    assert parts == [2, 2, 4, 4, 6, 8, 8]


def test_launch_runs_parts_at_the_same_time_on_different_threads(two_threads):
    # Whichever thread takes part 0 waits there until another thread has taken part 1; if the
    # parts ran one after the other, the barrier would time out and raise.
    meet = threading.Barrier(2, timeout=30)

    def kernel(part, parts):
        if part < 2:
            meet.wait()
        return threading.get_ident()

    ran_on = launch(kernel, values=MANY)
    assert ran_on[0] != ran_on[1] and threading.get_ident() in ran_on


def test_a_thread_slowed_down_does_fewer_parts(two_threads):
    def kernel(part, parts):
        if threading.get_ident() == caller:
            time.sleep(0.05)  # as if the caller's core were shared with another process
        return threading.get_ident()

    caller = threading.get_ident()
    ran_on = launch(kernel, values=MANY)
    assert ran_on.count(caller) < len(ran_on) // 2  # an even split would give it half


def test_launch_ends_every_running_part_and_starts_no_new_one_before_raising(two_threads):
    running, started = [0], []
    guard = threading.Lock()

    def kernel(part, parts):
        with guard:
            running[0] += 1
            started.append(part)
        try:
            time.sleep(0.05)
            if part == 1:
                raise ValueError("part 1 failed")
        finally:
            with guard:
                running[0] -= 1

    with pytest.raises(ValueError, match="part 1 failed"):
        launch(kernel, values=MANY)
    assert running[0] == 0  # no part still running once the error reached the caller
    assert len(started) < 2 * _parallel.PARTS_PER_THREAD  # and the rest were never started


def test_a_pool_runs_the_job_on_each_of_its_threads_and_its_threads_end_when_closed():
    pool = _parallel._Pool(3)
    for pause in (0, 0, 0.05, 0):  # launches right after another, and after the threads slept
        ran_on = []
        pool.run(lambda ran_on=ran_on: ran_on.append(threading.get_ident()))
        assert len(set(ran_on)) == 4 and threading.get_ident() in ran_on
        time.sleep(pause)
    pool.close()
    for thread in pool.threads:
        thread.join(timeout=30)
        assert not thread.is_alive()


@pytest.mark.parametrize("bad", [0, -1, 10**6])
def test_a_thread_count_out_of_range_is_refused_with_the_limit_named(bad):
    before = roipool.get_num_threads()
    with pytest.raises(ValueError, match=r"n \(the number of threads\) must be between 1 and NUMBA_NUM_THREADS=\d+"):
        roipool.set_num_threads(bad)
    assert roipool.get_num_threads() == before


@pytest.mark.parametrize("bad", [1.5, "2", True, None])
def test_a_thread_count_that_is_not_an_int_is_refused(bad):
    with pytest.raises(TypeError, match=r"n \(the number of threads\) must be an int"):
        roipool.set_num_threads(bad)


def test_the_thread_count_holds_for_every_python_thread():
    before = roipool.get_num_threads()
    seen = []
    try:
        roipool.set_num_threads(1)
        worker = threading.Thread(target=lambda: seen.append(roipool.get_num_threads()))
        worker.start()
        worker.join()
    finally:
        roipool.set_num_threads(before)
    assert seen == [1]
    assert roipool.get_num_threads() == _parallel.threads() == before


def _case():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 40, 24, 20)).astype(np.float32)
    return x, random_rois(rng, 300, 2, 24, 20, 1.0)


def test_calls_from_several_python_threads_at_once_give_the_bits_of_one_call(two_threads):
    x, rois = _case()
    expected = roipool.roi_align(x, rois, 5, 1.0, sampling_ratio=2)
    results = [None] * 4

    def call(i):
        results[i] = roipool.roi_align(x, rois, 5, 1.0, sampling_ratio=2)

    callers = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for t in callers:
        t.start()
    for t in callers:
        t.join()
    for r in results:
        np.testing.assert_array_equal(r, expected)


def _align_in_child(x, rois):
    roipool.set_num_threads(2)
    return roipool.roi_align(x, rois, 5, 1.0, sampling_ratio=2)


def test_a_forked_child_gets_threads_of_its_own(two_threads):
    # The parent's pool threads are not copied into a forked child (a DataLoader worker, say);
    # a pool reused from the parent would never run the child's parts, and the call would hang.
    x, rois = _case()
    expected = roipool.roi_align(x, rois, 5, 1.0, sampling_ratio=2)  # the parent's pool now exists
    with multiprocessing.get_context("fork").Pool(1) as pool:
        got = pool.apply_async(_align_in_child, (x, rois)).get(timeout=300)
    np.testing.assert_array_equal(got, expected)


def _chunks_by_definition(cost, pieces):
    """Run ``i`` ends after the first item at which the running total reaches ``i / pieces`` of the
    whole (``searchsorted``), runs that would be empty dropped."""
    total = np.cumsum(np.asarray(cost, np.float64))
    if pieces <= 1:
        return [0, len(cost)]
    ends = [int(np.searchsorted(total, total[-1] * i / pieces, side="left")) + 1 for i in range(1, pieces)]
    bounds = [0]
    for end in [*ends, len(cost)]:
        if end != bounds[-1]:
            bounds.append(end)
    return bounds


@pytest.mark.parametrize("seed", range(40))
def test_balanced_chunks_follow_their_definition(seed, two_threads):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(0, 50))
    cost = [
        rng.integers(0, 5, k),  # zeros and ties
        rng.exponential(1.0, k).astype(np.float32),
        rng.integers(0, 3, k) * 10.0 ** rng.integers(0, 12, k),  # a few items hold nearly everything
    ][seed % 3]
    per_thread = int(rng.integers(1, 9))
    bounds = _parallel.balanced_chunks(cost, per_thread)
    assert bounds.dtype == np.int64
    assert bounds.tolist() == _chunks_by_definition(cost, min(k, 2 * per_thread))


def test_a_one_thread_launch_takes_every_roi_in_one_run_and_the_split_is_made_for_more(two_threads, monkeypatch):
    from roipool.cpu import roi_align

    rois = random_rois(np.random.default_rng(7), 40, 1, 8, 8, 0.5).astype(np.float32)
    taps = roi_align.RoIAlignTaps(rois, 0.5, 3, 3, 2, True, 8, 8)
    monkeypatch.setattr(_parallel, "GRAIN", 1000)
    assert taps.runs(999).tolist() == [0, 40]
    assert "bounds" not in vars(taps)  # not computed: one thread takes the RoIs in one run
    assert taps.runs(1000).tolist() == _parallel.balanced_chunks(taps.cost).tolist()
    assert len(taps.runs(1000)) > 2


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("channels, dtype", [(12, np.float32), (131, np.float64)])
def test_every_op_gives_the_same_bits_in_one_run_on_one_thread_as_in_parts(
    two_threads, monkeypatch, layout, channels, dtype
):
    # On one thread an NCHW map is copied into channel blocks by the kernel's own call (131
    # channels: a full block of 128 and a narrow one; float64: 64 and three narrow ones).
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, channels, 9, 11)).astype(dtype)
    xl = np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if layout == "nhwc" else x
    rois = random_rois(rng, 23, 2, 9, 11, 0.5).astype(dtype)
    centres, sides = rng.uniform(0, 20, (23, 2)), rng.uniform(1, 9, (23, 2))
    rotated = np.column_stack([rois[:, :1], centres, sides, rng.uniform(-2, 2, 23)]).astype(dtype)
    calls = {
        "roi_pool": lambda: roipool.roi_pool(xl, rois, 3, 0.5, layout=layout),
        "roi_pool argmax": lambda: roipool.roi_pool_with_argmax(xl, rois, 3, 0.5, layout=layout)[1],
        "roi_align": lambda: roipool.roi_align(xl, rois, 3, 0.5, 2, True, layout=layout),
        "prroi_pool": lambda: roipool.prroi_pool(xl, rois, 3, 0.5, layout=layout),
        "roi_align_rotated": lambda: roipool.roi_align_rotated(xl, rotated, 3, 0.5, 2, True, layout=layout),
    }
    if layout == "nchw":  # the box gradients' runs; torch's forwards hand the kernels the NCHW map too
        torch = pytest.importorskip("torch")
        xt, rt = torch.from_numpy(x), torch.from_numpy(rois)
        calls["torch roi_pool"] = lambda: roipool.roi_pool(xt, rt, 3, 0.5).numpy()
        calls["torch roi_align"] = lambda: roipool.roi_align(xt, rt, 3, 0.5, 2, True).numpy()
        upstream = rng.standard_normal((23, channels, 3, 3)).astype(dtype)
        calls["roi_align boxes"] = lambda: roipool.roi_align_boxes_backward(upstream, x, rois, 3, 0.5, 2, True)
        calls["prroi_pool boxes"] = lambda: roipool.prroi_pool_boxes_backward(upstream, x, rois, 3, 0.5)
    for name, call in calls.items():
        monkeypatch.setattr(_parallel, "GRAIN", 0)  # in parts, the RoIs in balanced runs
        in_parts = call()
        monkeypatch.setattr(_parallel, "GRAIN", MANY)  # on the calling thread, all in one run
        np.testing.assert_array_equal(call(), in_parts, err_msg=name)
