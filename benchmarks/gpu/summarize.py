"""Summary of a GPU run: step statuses, test counts and failures, and the bench table with floors.

``python benchmarks/gpu/summarize.py OUT`` reads what ``check.sh`` left in OUT
(``steps.txt``, ``tests.xml``, ``bench*.json``, ``backward_memory_*.json``, ``sweep.log``) and
writes ``OUT/summary.md``. Missing pieces are reported as missing, never invented.
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def tests_section(out: Path) -> list[str]:
    path = out / "tests.xml"
    if not path.exists():
        return ["tests: no tests.xml (the test step did not finish)"]
    suites = ET.parse(path).getroot()
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    failed = []
    for suite in suites.iter("testsuite"):
        for key in counts:
            counts[key] += int(suite.get(key, 0))
        for case in suite.iter("testcase"):
            if case.find("failure") is not None or case.find("error") is not None:
                failed.append(f"{case.get('classname')}::{case.get('name')}")
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    lines = [f"tests: {passed} passed, {counts['failures'] + counts['errors']} failed, {counts['skipped']} skipped"]
    lines += [f"  FAILED {name}" for name in failed[:30]]
    return lines


def bench_section(out: Path, name: str = "bench") -> list[str]:
    path = out / f"{name}.json"
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return [f"{name}: no readable {name}.json ({type(exc).__name__})"]
    lines = [
        "| workload | op | mode | implementation | median ms | floor ms | x floor | speed-up |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        floor = r.get("floor_ms")
        ratio = f"{r['median_ms'] / floor:.1f}x" if floor else ""
        speedup = f"{r['speedup']:.2f}x vs {r['baseline']}" if r.get("speedup") else ""
        floor_text = f"{floor:.3f}" if floor else ""
        lines.append(
            f"| {r['workload']} | {r['op']} | {r['mode']} | {r['impl']} | {r['median_ms']:.3f} | {floor_text} "
            f"| {ratio} | {speedup} |"
        )
    machine = report.get("machine", {})
    return [f"{name} machine: {machine.get('gpu', machine.get('cpu', '?'))}", *lines]


def memory_section(out: Path) -> list[str]:
    lines = []
    for path in sorted(out.glob("backward_memory_*.json")):
        record = json.loads(path.read_text())
        parts = [f"{impl} {v['peak_extra_bytes'] / 1e6:.1f} MB" for impl, v in record.items()]
        lines.append(f"backward peak extra memory, {path.stem.removeprefix('backward_memory_')}: " + ", ".join(parts))
    return lines or ["backward memory: not measured"]


def sweep_section(out: Path) -> list[str]:
    """The sweep's own table (``sweep.log``: one row per case and pass, a column per launch setting)."""
    path = out / "sweep.log"
    if not path.exists():
        return ["sweep: no sweep.log"]
    return ["sweep (ms; best setting and torchvision / best):", "```", *path.read_text().rstrip().splitlines(), "```"]


def main(out: str) -> int:
    out_dir = Path(out)
    steps = (out_dir / "steps.txt").read_text().strip().splitlines() if (out_dir / "steps.txt").exists() else []
    env = out_dir / "environment.json"
    header = json.loads(env.read_text()) if env.exists() else {}
    lines = [
        "# GPU check",
        "",
        f"GPU: {header.get('gpu', 'none')}; torch {header.get('torch')}; triton {header.get('triton')}",
        "",
        *steps,
        "",
        *tests_section(out_dir),
        "",
        *memory_section(out_dir),
        "",
        *bench_section(out_dir),
        "",
        *bench_section(out_dir, "bench-more"),
        "",
        *bench_section(out_dir, "bench-jax"),
        "",
        *sweep_section(out_dir),
    ]
    (out_dir / "summary.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
