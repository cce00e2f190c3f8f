"""What the GPU run ran on: versions, the GPU, and where roipool was imported from.

``python benchmarks/gpu/environment.py OUT.json`` prints a few lines and writes them as JSON.
Fails (exit 1) when roipool is not this checkout's ``src/`` or torch is older than
the package supports, so the rest of the run is not spent on the wrong code.
"""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
MIN_TORCH = (2, 4)


def _version(name: str) -> str | None:
    try:
        return importlib.import_module(name).__version__
    except Exception as exc:  # noqa: BLE001 - any failure to import is worth reporting, not fatal
        return f"unavailable ({type(exc).__name__}: {exc})"[:200]


def main(path: str) -> int:
    info: dict = {"python": sys.version.split()[0]}
    for name in ("numpy", "numba", "torch", "torchvision", "triton", "jax", "onnxruntime"):
        info[name] = _version(name)
    import torch

    import roipool

    info["roipool_from"] = str(Path(roipool.__file__).resolve().parent)
    info["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = props.name
        info["multiprocessors"] = props.multi_processor_count
        info["memory_gib"] = round(props.total_memory / 2**30, 1)
        info["l2_mb"] = round(getattr(props, "L2_cache_size", 0) / 1e6, 1)
        info["capability"] = f"{props.major}.{props.minor}"
    if shutil.which("nvidia-smi"):
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        info["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    for key, value in info.items():
        print(f"{key}: {value}")
    Path(path).write_text(json.dumps(info, indent=2))
    problems = []
    if Path(info["roipool_from"]) != SRC / "roipool":
        problems.append(f"roipool was imported from {info['roipool_from']}, not {SRC / 'roipool'}")
    if tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) < MIN_TORCH:
        problems.append(f"torch {torch.__version__} is older than {'.'.join(map(str, MIN_TORCH))}")
    for p in problems:
        print(f"problem: {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "environment.json"))
