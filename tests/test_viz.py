"""Pictures are written, are PNGs, and are not blank."""

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from roipool import demo, viz  # noqa: E402


def _not_blank(path):
    import matplotlib.image

    pixels = matplotlib.image.imread(str(path))
    assert pixels.ndim == 3 and pixels.shape[0] > 200 and pixels.shape[1] > 200
    # Many distinct colours, and not one flat value.
    assert pixels[..., :3].std() > 0.05
    assert len(np.unique(pixels[..., :3].reshape(-1, 3).round(2), axis=0)) > 50


def test_forward_pass_picture(tmp_path):
    path = viz.forward_pass_figure(
        tmp_path / "forward.png", demo.FEATURE_MAP, demo.PROPOSAL, demo.SPATIAL_SCALE, demo.OUTPUT_SIZE
    )
    _not_blank(path)


def test_proposals_picture(tmp_path):
    path = viz.proposals_figure(tmp_path / "proposals.png")
    _not_blank(path)


def test_demo_draws_and_prints_its_pictures(tmp_path):
    lines = []
    demo.main(print=lambda *a: lines.append(" ".join(map(str, a))), out_dir=tmp_path / "pics")
    text = "\n".join(lines)
    for name in ("roi-pool-forward.png", "roi-pool-proposals.png"):
        assert str(tmp_path / "pics" / name) in text
        _not_blank(tmp_path / "pics" / name)


def test_detection_picture(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("safetensors")
    from roipool.fastrcnn.figures import detections_figure
    from roipool.fastrcnn.model import FastRCNN
    from roipool.fastrcnn.train import TrainConfig, model_config, save

    torch.manual_seed(0)
    for proposals in ("rpn", "windows"):
        config = TrainConfig(dataset="easy", model=model_config("easy", proposals))
        save(FastRCNN(**config.model), tmp_path / proposals, config)
        _not_blank(detections_figure(tmp_path / proposals, tmp_path / f"{proposals}.png", images=2, min_score=0.0))
