"""The ``roipool`` command: demo and bench run and say what they should."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from roipool import cli, demo


def test_demo_walks_through_the_worked_example(capsys):
    out = demo.walk_through()
    text = capsys.readouterr().out
    assert "Scale by spatial_scale=1/32" in text
    assert "rows 3..7 and columns 0..7" in text
    # the pooled values are the maxima of the bins the walk-through prints
    x = demo.FEATURE_MAP
    np.testing.assert_array_equal(
        out[0, 0], [[x[3:6, 0:4].max(), x[3:6, 4:8].max()], [x[5:8, 0:4].max(), x[5:8, 4:8].max()]]
    )


def test_demo_command_prints_shapes(capsys, tmp_path):
    assert cli.main(["demo", "--out", str(tmp_path)]) == 0
    assert "-> (300, 256, 7, 7)" in capsys.readouterr().out


def test_bench_json_on_the_smoke_workload(capsys):
    assert cli.main(["bench", "--workload", "tiny", "--repeat", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["machine"]["cores"] >= 1
    ours = [r for r in report["results"] if r["impl"] == "roipool (numpy)" and r["op"] == "roi_pool"]
    assert {r["mode"] for r in ours} == {"forward", "forward+backward"}
    assert all(r["median_ms"] > 0 for r in report["results"])


def test_bench_rejects_unknown_workload():
    result = subprocess.run(
        [sys.executable, "-m", "roipool.cli", "bench", "--workload", "nope"], capture_output=True, text=True
    )
    assert result.returncode != 0 and "unknown workload 'nope'" in result.stderr


def test_import_does_not_import_torch():
    code = "import roipool, sys; assert 'torch' not in sys.modules and 'numba' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def _run_without(module, argv):
    """Run ``roipool <argv>`` in a fresh interpreter where importing ``module`` fails."""
    code = (
        "import sys\n"
        f"sys.modules[{module!r}] = None  # import now raises ModuleNotFoundError\n"
        "from roipool import cli\n"
        f"sys.exit(cli.main({argv!r}))\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_a_missing_extra_is_one_line_naming_it(tmp_path):
    result = _run_without("torch", ["fast-rcnn", "train", "--out", str(tmp_path / "model"), "--epochs", "1"])
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "roipool: this command needs torch, which is not installed; pip install 'roipool[fastrcnn]'"
    ]


def test_only_the_commands_own_extra_is_reported():
    # a missing package that the command's extra does not provide is a real error, re-raised
    assert cli.missing_extra(ModuleNotFoundError(name="tqdm"), "fastrcnn").endswith("pip install 'roipool[fastrcnn]'")
    assert cli.missing_extra(ModuleNotFoundError(name="matplotlib.pyplot"), "viz").endswith("'roipool[viz]'")
    assert cli.missing_extra(ModuleNotFoundError(name="torch"), "torch").endswith("'roipool[torch]'")
    assert cli.missing_extra(ModuleNotFoundError(name="numpy"), "fastrcnn") is None
    assert cli.missing_extra(ModuleNotFoundError(name="tqdm"), None) is None
