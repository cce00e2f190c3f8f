"""``roipool bench``: time the ops on named workloads against every installed peer.

Peers are measured in the same process and interleaved with roipool (one run
of each per repeat), and medians are reported, because shared machines are
noisy and only ratios measured side by side mean much. Peers: ONNX Runtime
(``MaxRoiPool``, ``RoiAlign``; forward only) and torchvision's CPU ops
(forward, forward+backward) when importable.

The workloads are in :mod:`.workloads`, the implementations timed in
:mod:`.candidates`; this module times them and reports.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass, field

import numpy as np

from .candidates import Candidate, _optional, candidates, pyramid_candidates, rotated_candidates
from .workloads import PYRAMID_WORKLOADS, WORKLOADS, PyramidWorkload, RotatedWorkload, Workload

__all__ = [
    "Candidate",
    "PYRAMID_WORKLOADS",
    "PyramidWorkload",
    "Row",
    "RotatedWorkload",
    "WORKLOADS",
    "Workload",
    "candidates",
    "floor_bytes",
    "machine",
    "main",
    "measure",
    "pyramid_candidates",
    "rotated_candidates",
    "run",
]


@dataclass
class Row:
    workload: str
    op: str
    mode: str
    impl: str
    median_ms: float
    times_ms: list = field(default_factory=list)
    speedup: float | None = None  # fastest peer's median / this median, on roipool's rows
    baseline: str | None = None  # which peer and mode the speed-up is against
    floor_ms: float | None = None  # bytes that must move / the device's measured copy bandwidth (cuda)


def _touch(nbytes: int) -> None:
    """Write ``nbytes`` of fresh memory and free it."""
    if nbytes:
        np.ones(nbytes // 8, np.float64)


def _quiesce(limit_s: float = 1.0, window_s: float = 0.02) -> None:
    """Wait, up to ``limit_s``, until no thread of the process has used the CPU for ``window_s``.

    Some peers' thread pools keep spinning after a call returns (Intel's
    OpenMP, which Intel Extension for PyTorch uses, for 200 ms by default):
    without this wait the call timed next, always the same candidate in the
    rotation, would share the cores with them.
    """
    deadline = time.perf_counter() + limit_s
    while time.perf_counter() < deadline:
        used = time.process_time()
        time.sleep(window_s)
        if time.process_time() - used < window_s / 10:
            return


def floor_bytes(map_bytes: int, output_bytes: int, mode: str) -> int:
    """Bytes that must cross memory: the output written, and for a training step also
    ``grad_output`` read and every cell of ``grad_input`` written (reading the map is
    not counted: a RoI reads only its footprint, which may be little of it)."""
    return output_bytes if mode == "forward" else 2 * output_bytes + map_bytes


def cuda_copy_bandwidth(torch, nbytes: int = 1 << 30) -> float:
    """Bytes per second of a device-to-device copy, counting bytes read and written (median of 5)."""
    a = torch.empty(nbytes // 4, dtype=torch.float32, device="cuda")
    b = torch.empty_like(a)
    b.copy_(a)
    times = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        b.copy_(a)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * nbytes / statistics.median(times)


class _CudaTimer:
    """Times a call between two CUDA events, after evicting L2 with a 256 MB write (as ``do_bench`` does)."""

    def __init__(self, torch):
        self.torch = torch
        self.flush = torch.empty(1 << 26, dtype=torch.float32, device="cuda")

    def __call__(self, run):
        self.flush.zero_()
        start = self.torch.cuda.Event(enable_timing=True)
        end = self.torch.cuda.Event(enable_timing=True)
        start.record()
        result = run()
        end.record()
        end.synchronize()
        return start.elapsed_time(end), result


def measure(
    cands: list[Candidate], repeat: int, warmup: int = 1, touch_bytes: int = 0, timer=None, calls: int = 1
) -> dict[str, list[float]]:
    """Interleaved timings in ms: each repeat runs every candidate once (``calls`` times in a row).

    The order rotates from one repeat to the next, and before each timed call
    the process waits until its threads are idle (:func:`_quiesce`) and
    ``touch_bytes`` of memory are written and freed (untimed). On a VM that
    hands freed memory back to its host after a second or two (free page
    reporting, as on our development VM), the first large allocation after a
    long call pays the host's page faults again, up to 300 ms for 200 MB;
    in a training loop the op runs often enough that its memory stays with
    the guest. Touching first gives every candidate that steady state.

    ``calls`` > 1 (wall clock only) times that many calls back to back and reports their mean,
    each call's result dropped when the next one returns, as in a loop: the
    steady state of small calls made one after the other (caches, and threads
    that have not yet gone to sleep, warm from the call before), where the
    default times a call after the process has been idle.

    ``timer(run) -> (ms, result)`` replaces the wall clock (``_CudaTimer`` on a GPU).
    """
    for c in cands:
        for _ in range(warmup):
            c.run()
    times: dict[str, list[float]] = {c.impl: [] for c in cands}
    for r in range(repeat):
        shift = r % len(cands)
        for c in cands[shift:] + cands[:shift]:
            if timer is not None:
                ms, result = timer(c.run)
            else:
                _quiesce()
                _touch(touch_bytes)
                t0 = time.perf_counter()
                for _ in range(calls):
                    result = c.run()
                ms = (time.perf_counter() - t0) * 1e3 / calls
            times[c.impl].append(ms)
            del result
    return times


def machine(device: str = "cpu") -> dict:
    import numba

    import roipool
    from roipool.cpu import _machine

    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "numba": numba.__version__,
        "roipool_threads": roipool.get_num_threads(),
        "roipool_memory_cache": f"{roipool.get_memory_cache()[0] >> 20} MiB",
        # the cache sizes the kernels' choices read (cpu/_machine.py), not always what /sys says
        "roipool_l2": f"{_machine.l2_bytes() >> 10} KiB",
        "roipool_l3": f"{_machine.l3_bytes() >> 20} MiB",
    }
    for name in ("torch", "torchvision", "onnxruntime"):
        mod = _optional(name)
        if mod is not None:
            info[name] = mod.__version__
    if device == "cuda":
        import torch

        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _cpu_name(cpuinfo: str | None = None) -> str:
    """The first CPU's model name, family, model and widest vector instructions, from
    ``/proc/cpuinfo`` (or ``cpuinfo``, its text): ``"AMD EPYC (family 25, model 17, AVX2)"``.

    The name alone does not tell two machines apart whose kernels run at different speeds: a
    hypervisor may report only "AMD EPYC", and may hide AVX-512 from a CPU that has it.
    """
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return platform.processor() or "unknown"
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip() and fields:
            break  # the first processor's block only
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name") or platform.processor() or "unknown"
    details = []
    if "cpu family" in fields and "model" in fields:
        details.append(f"family {fields['cpu family']}, model {fields['model']}")
    flags = set(fields.get("flags", "").split())
    if "avx512f" in flags:
        details.append("AVX-512")
    elif "avx2" in flags:
        details.append("AVX2")
    return f"{name} ({', '.join(details)})" if details else name


OPS = ("roi_pool", "roi_align", "ps_roi_pool", "ps_roi_align", "roi_align_rotated", "prroi_pool")
MODES = ("forward", "forward+backward")


def run(
    workloads,
    repeat: int,
    device: str = "cpu",
    ops=OPS,
    bandwidth: float | None = None,
    jax: bool = False,
    channels_last: bool = False,
    calls: int = 1,
) -> list[Row]:
    """Rows for every op of every workload; on ``cuda`` timed by CUDA events, with floors at
    ``bandwidth`` bytes/s (measured here when not given). ``channels_last``: every feature map
    in channels-last memory, the workloads named ``<name>/channels-last``. ``calls``: see
    :func:`measure`."""
    timer = None
    if device == "cuda":
        import torch

        timer = _CudaTimer(torch)
        bandwidth = bandwidth or cuda_copy_bandwidth(torch)
    rows: list[Row] = []

    def block(wname, op, cands_for, map_bytes, output_bytes):
        forward_peers: list[Row] = []
        for mode in MODES:
            cands = cands_for(mode)
            if not any(c.is_ours for c in cands):
                continue
            times = measure(cands, repeat, touch_bytes=3 * output_bytes, timer=timer, calls=calls)
            timed = [
                Row(wname, op, mode, c.impl, statistics.median(times[c.impl]), [round(t, 3) for t in times[c.impl]])
                for c in cands
            ]
            ours = {c.impl for c in cands if c.is_ours}
            peers = [r for r in timed if r.impl not in ours]
            if mode == "forward":
                forward_peers = peers
            elif not peers:
                # ONNX Runtime has no backward: a training step is compared
                # with the peer's forward alone, as the goals are stated.
                peers = forward_peers
            for r in timed:
                if bandwidth:
                    r.floor_ms = floor_bytes(map_bytes, output_bytes, mode) / bandwidth * 1e3
                if peers and r.impl in ours:
                    best = min(peers, key=lambda p: p.median_ms)
                    r.speedup = best.median_ms / r.median_ms
                    r.baseline = f"{best.impl} {best.mode}"
            rows.extend(timed)

    def variant(w):
        return dataclasses.replace(w, name=f"{w.name}/channels-last", channels_last=True) if channels_last else w

    for wname in workloads:
        if wname in PYRAMID_WORKLOADS:
            pw = variant(PYRAMID_WORKLOADS[wname])
            wname = pw.name
            k = pw.images * pw.boxes_per_image
            cells = sum(-(-pw.image_h // s) * -(-pw.image_w // s) for s in pw.strides)
            for size in pw.output_sizes:
                block(
                    wname,
                    f"multi_scale_roi_align {size}x{size}",
                    lambda mode, pw=pw, size=size: pyramid_candidates(pw, size, mode, device),
                    pw.images * pw.channels * cells * 4,
                    k * pw.channels * size * size * 4,
                )
            continue
        workload = variant(WORKLOADS[wname])
        wname = workload.name
        for op in ops:
            if op.startswith("ps_") != workload.position_sensitive:
                continue  # position-sensitive ops need C divisible by bins: workloads of their own
            if (op == "roi_align_rotated") != isinstance(workload, RotatedWorkload):
                continue  # rotated boxes: workloads of their own
            k = workload.images * workload.boxes_per_image
            map_bytes = workload.images * workload.channels * workload.height * workload.width * 4
            out_channels = (
                workload.channels // workload.output_size**2 if workload.position_sensitive else workload.channels
            )
            block(
                wname,
                op,
                lambda mode, op=op, w=workload: candidates(w, op, mode, device, jax),
                map_bytes,
                k * out_channels * workload.output_size**2 * 4,
            )
    return rows


def format_table(rows: list[Row]) -> str:
    floors = any(r.floor_ms is not None for r in rows)
    floor_head = f" {'floor ms':>9}" if floors else ""
    wide = max([12, *(len(r.workload) for r in rows)])
    head = (
        f"{'workload':<{wide}} {'op':<10} {'mode':<17} {'implementation':<26} {'median ms':>10}{floor_head}  speed-up"
    )
    lines = [head]
    for r in rows:
        ratio = f"{r.speedup:.1f}x vs {r.baseline}" if r.speedup is not None else ""
        floor = f" {r.floor_ms:>9.3f}" if floors and r.floor_ms is not None else (" " * 10 if floors else "")
        lines.append(f"{r.workload:<{wide}} {r.op:<10} {r.mode:<17} {r.impl:<26} {r.median_ms:>10.3f}{floor}  {ratio}")
    return "\n".join(lines)


def main(args) -> int:
    known = {**WORKLOADS, **PYRAMID_WORKLOADS}
    defaults = [n for n, w in WORKLOADS.items() if w.in_default_run]
    defaults += [n for n, w in PYRAMID_WORKLOADS.items() if args.device in w.devices]
    names = args.workload or defaults
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"roipool bench: unknown workload {unknown[0]!r}; choose from {', '.join(known)}")
    if args.repeat < 1:
        raise SystemExit("roipool bench: --repeat must be at least 1")
    calls = getattr(args, "calls", 1)
    if calls < 1:
        raise SystemExit("roipool bench: --calls must be at least 1")
    if calls > 1 and args.device == "cuda":
        raise SystemExit("roipool bench: --calls is for CPU timings (CUDA events time one call)")
    if args.device == "cuda":
        torch = _optional("torch")
        if torch is None or not torch.cuda.is_available():
            raise SystemExit(
                "roipool bench: --device cuda needs torch and a GPU it can see (torch.cuda.is_available())"
            )
    bandwidth = cuda_copy_bandwidth(torch) if args.device == "cuda" else None
    rows = run(
        names,
        args.repeat,
        args.device,
        bandwidth=bandwidth,
        jax=getattr(args, "jax", False),
        channels_last=getattr(args, "channels_last", False),
        calls=calls,
    )
    info = machine(args.device)
    if bandwidth:
        info["copy_bandwidth_gb_s"] = round(bandwidth / 1e9, 1)
    if args.json:
        print(json.dumps({"machine": info, "calls": calls, "results": [r.__dict__ for r in rows]}, indent=2))
    else:
        print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))
        print(format_table(rows))
        each = f", each the mean of {calls} calls back to back" if calls > 1 else ""
        print(
            f"(medians of {args.repeat} interleaved repeats{each}; speed-up = the fastest peer's median / this median)"
        )
    return 0
