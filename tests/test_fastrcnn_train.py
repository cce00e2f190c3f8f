"""Fast R-CNN training: RoI sampling, loss, a tiny run, checkpoints, two processes, the commands."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from roipool import cli  # noqa: E402
from roipool.fastrcnn import data as D  # noqa: E402
from roipool.fastrcnn.boxes import box_iou  # noqa: E402
from roipool.fastrcnn.evaluate import load  # noqa: E402
from roipool.fastrcnn.model import FastRCNN  # noqa: E402
from roipool.fastrcnn.proposals import dense_proposals  # noqa: E402
from roipool.fastrcnn.train import (  # noqa: E402
    TrainConfig,
    fast_rcnn_loss,
    launch,
    model_config,
    sample_rois,
    save,
    train,
)


def _tiny(proposals="windows", **kw):
    base = dict(epochs=1, images_per_epoch=8, batch_images=4, val_images=2, dataset="easy",
                model=model_config("easy", proposals))  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def _easy_config():
    return TrainConfig(dataset="easy", model=model_config("easy", "windows"))


def test_roi_sampling_follows_fast_rcnn():
    config = TrainConfig()
    s = D.make_sample(0, D.TRAIN, 0)
    gt = torch.from_numpy(s.boxes)
    rois, labels, targets = sample_rois(torch.from_numpy(dense_proposals(128, 128)), gt, torch.from_numpy(s.labels),
                                        config, torch.Generator().manual_seed(0))  # fmt: skip
    assert len(rois) == config.rois_per_image
    fg = labels > 0
    assert fg.sum() == config.rois_per_image // 4  # a quarter foreground
    iou = box_iou(rois, gt).max(dim=1).values
    assert torch.all(iou[fg] >= 0.5)
    assert torch.all((iou[~fg] >= 0.1) & (iou[~fg] < 0.5))
    assert torch.all(targets[~fg] == targets[~fg])  # finite


def test_ground_truth_boxes_are_training_candidates():
    config = TrainConfig(rois_per_image=2000)  # keep every foreground candidate
    gt = torch.tensor([[3.0, 5.0, 13.0, 17.0]])  # smaller than any window: only itself is foreground
    rois, labels, targets = sample_rois(torch.from_numpy(dense_proposals(128, 128)), gt, torch.tensor([2]),
                                        config, torch.Generator().manual_seed(0))  # fmt: skip
    fg_rois, fg_targets = rois[labels == 2], targets[labels == 2]
    itself = [i for i, r in enumerate(fg_rois) if torch.equal(r, gt[0])]
    assert itself, "the ground-truth box must be among the foreground RoIs"
    torch.testing.assert_close(fg_targets[itself[0]], torch.zeros(4))


def test_box_loss_reads_only_the_true_class_columns():
    logits = torch.zeros(2, 4)
    deltas = torch.zeros(2, 12)
    deltas[0, 4:8] = 1.0  # class 2's columns of a class-2 RoI: counted
    deltas[1, 0:4] = 5.0  # a background RoI: never counted
    cls, box = fast_rcnn_loss(logits, deltas, torch.tensor([2, 0]), torch.zeros(2, 4))
    assert cls.item() == pytest.approx(np.log(4))
    assert box.item() == pytest.approx(4 * 0.5 / 2)  # smooth L1 of 1 is 1/2; 4 coordinates over 2 RoIs


def test_a_tiny_training_run_lowers_the_loss(tmp_path):
    metrics = train(_tiny(images_per_epoch=64, batch_images=2), tmp_path, progress=False)
    assert metrics["loss_last"] < 0.8 * metrics["loss_first"]
    assert (tmp_path / "metrics.json").exists()
    assert set(json.loads((tmp_path / "metrics.json").read_text())) >= {"map50", "train_seconds"}


def test_checkpoint_loads_without_executing_code(tmp_path):
    from safetensors.torch import load_file

    torch.manual_seed(0)
    model = FastRCNN().eval()
    save(model, tmp_path, _easy_config())
    tensors = load_file(str(tmp_path / "model.safetensors"))  # plain tensors, no pickle
    assert set(tensors) == set(model.state_dict())
    again = load(tmp_path)
    image = torch.from_numpy(D.make_sample(0, D.TEST, 0).image)[None]
    rois = torch.tensor([[0.0, 10, 10, 60, 50]])
    for a, b in zip(model(image, rois), again(image, rois), strict=True):
        torch.testing.assert_close(a, b)


def test_svd_head_is_exact_at_full_rank_and_close_when_truncated():
    torch.manual_seed(0)
    model = FastRCNN().eval()
    pooled = torch.randn(5, 64, 7, 7)
    full = model.head(pooled)[0]
    exact = FastRCNN().eval()
    exact.load_state_dict(model.state_dict())
    exact.compress_head(255, 255)  # one below full: nearly exact
    torch.testing.assert_close(exact.head(pooled)[0], full, atol=1e-2, rtol=0)
    assert isinstance(exact.fc6, torch.nn.Sequential) and exact.fc6[0].out_features == 255


def test_roi_align_is_selectable_or_reported_pending():
    try:
        from roipool.nn import RoIAlign  # noqa: F401
    except ImportError:
        with pytest.raises(NotImplementedError, match="RoIAlign"):
            FastRCNN(pooler="roi_align")
    else:
        model = FastRCNN(pooler="roi_align")
        assert model(torch.rand(1, 3, 64, 64), torch.tensor([[0.0, 0, 0, 30, 30]]))[0].shape == (1, 4)


def test_two_processes_train_the_rpn_detector_with_ddp_over_gloo(tmp_path):
    metrics = launch(_tiny("rpn"), tmp_path, nproc=2, progress=False)
    assert metrics["nproc"] == 2 and metrics["steps"] == 2 and metrics["proposals"] == "rpn"
    assert metrics["loss_parts_first"]["rpn_cls"] > 0  # the RPN's loss was part of the step
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "metrics.json", "model.safetensors"]
    assert load(tmp_path).rpn is not None


def test_fast_rcnn_commands_eval_detect_speed(tmp_path, capsys):
    torch.manual_seed(0)
    save(FastRCNN(), tmp_path / "m", _easy_config())
    assert cli.main(["fast-rcnn", "eval", "--model", str(tmp_path / "m"), "--images", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert 0 <= result["map50"] <= 1 and result["dataset"] == "easy"
    png = tmp_path / "det.png"
    assert cli.main(["fast-rcnn", "detect", "--model", str(tmp_path / "m"), "--out", str(png), "--images", "1"]) == 0
    assert png.stat().st_size > 1000 and str(png) in capsys.readouterr().out
    args = ["fast-rcnn", "speed", "--proposals", "40", "--image-size", "64", "--repeat", "1", "--svd-rank", "8"]
    assert cli.main([*args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["proposals"] == 40 and report["speedup"] > 0
    assert report["per_proposal_ms"] > 0 and report["shared_ms"] > 0
    assert cli.main(args) == 0
    assert "speedup" in capsys.readouterr().out


def test_detector_speed_comparison_command(tmp_path, capsys):
    torch.manual_seed(0)
    save(FastRCNN(**model_config("easy", "rpn")), tmp_path / "rpn", _tiny("rpn"))
    save(FastRCNN(), tmp_path / "win", _easy_config())
    args = ["fast-rcnn", "speed", "--detectors", str(tmp_path / "rpn"), str(tmp_path / "win"), "--images", "2",
            "--repeat", "1", "--json"]  # fmt: skip
    assert cli.main(args) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["rpn"]["proposals"] <= 300 and r["windows"]["proposals"] == len(dense_proposals(128, 128))
    assert r["ratio"] == pytest.approx(r["windows"]["ms"] / r["rpn"]["ms"])
    # The wrong order is refused with one line.
    args[3], args[4] = args[4], args[3]
    assert cli.main(args) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
