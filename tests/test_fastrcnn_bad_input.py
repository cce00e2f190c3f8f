"""Bad input to the detector's commands: one clear error line, nothing half-written."""

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from roipool import cli  # noqa: E402
from roipool.fastrcnn import train as T  # noqa: E402
from roipool.fastrcnn.evaluate import ModelError, load  # noqa: E402
from roipool.fastrcnn.model import FastRCNN  # noqa: E402


def _saved(tmp_path, proposals="windows"):
    config = T.TrainConfig(dataset="easy", model=T.model_config("easy", proposals))
    T.save(FastRCNN(**config.model), tmp_path / "m", config)
    return tmp_path / "m"


def _one_error_line(capsys, *words):
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("roipool fast-rcnn: error:"), err
    for word in words:
        assert word in err, (word, err)


def test_a_missing_model_folder_is_named(tmp_path, capsys):
    with pytest.raises(ModelError, match="does not exist"):
        load(tmp_path / "nope")
    for command in (["eval"], ["detect", "--out", str(tmp_path / "x.png")]):
        assert cli.main(["fast-rcnn", *command, "--model", str(tmp_path / "nope")]) == 2
        _one_error_line(capsys, "nope", "does not exist")
    assert not (tmp_path / "x.png").exists()


def test_a_folder_from_another_version_is_named(tmp_path, capsys):
    folder = _saved(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    del config["format"]  # what the previous version wrote
    (folder / "config.json").write_text(json.dumps(config))
    assert cli.main(["fast-rcnn", "eval", "--model", str(folder)]) == 2
    _one_error_line(capsys, "another version")


def test_a_config_that_does_not_match_its_weights_is_named(tmp_path, capsys):
    folder = _saved(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["model"]["hidden"] = 128  # the weights have 256
    (folder / "config.json").write_text(json.dumps(config))
    assert cli.main(["fast-rcnn", "eval", "--model", str(folder)]) == 2
    _one_error_line(capsys, "does not match", "fc6.weight")
    config["model"]["hidden"] = 256
    config["model"]["proposals"] = "rpn"  # an RPN the weights do not have
    (folder / "config.json").write_text(json.dumps(config))
    assert cli.main(["fast-rcnn", "eval", "--model", str(folder)]) == 2
    _one_error_line(capsys, "does not match", "rpn.")
    (folder / "config.json").write_text("{not json")
    assert cli.main(["fast-rcnn", "eval", "--model", str(folder)]) == 2
    _one_error_line(capsys, "not valid JSON")
    (folder / "model.safetensors").unlink()
    assert cli.main(["fast-rcnn", "eval", "--model", str(folder)]) == 2
    _one_error_line(capsys, "no model.safetensors")


@pytest.mark.parametrize("option, value", [("--dataset", "medium"), ("--proposals", "selective-search"),
                                           ("--epochs", "0")])  # fmt: skip
def test_the_parser_refuses_unknown_choices(tmp_path, capsys, option, value):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["fast-rcnn", "train", "--out", str(tmp_path / "out"), option, value])
    assert exit_info.value.code == 2
    assert option in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_train_refuses_a_file_as_out_before_any_work(tmp_path, capsys):
    (tmp_path / "file").write_text("keep me")
    assert cli.main(["fast-rcnn", "train", "--out", str(tmp_path / "file")]) == 2
    _one_error_line(capsys, "not a folder")
    assert (tmp_path / "file").read_text() == "keep me"


def test_nothing_is_written_to_out_when_training_fails_to_start(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("the first step failed")

    monkeypatch.setattr(T, "_batch", broken)
    config = T.TrainConfig(dataset="easy", model=T.model_config("easy", "rpn"), epochs=1, images_per_epoch=4)
    with pytest.raises(RuntimeError, match="first step"):
        T.train(config, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    # Two processes: refused before anything is launched or written.
    with pytest.raises(ValueError, match="divisible"):
        T.launch(T.TrainConfig(batch_images=3), tmp_path / "out", nproc=2, progress=False)
    assert not (tmp_path / "out").exists()


def test_an_interrupted_save_leaves_no_half_written_model(tmp_path, monkeypatch):
    import safetensors.torch

    folder = _saved(tmp_path)
    before = (folder / "model.safetensors").read_bytes()

    def interrupted(state, path):
        with open(path, "wb") as f:
            f.write(b"half a mod")
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        T.save(FastRCNN(), folder, T.TrainConfig(dataset="easy"))
    assert (folder / "model.safetensors").read_bytes() == before  # the old model, whole
    load(folder)
    fresh = tmp_path / "fresh"
    with pytest.raises(KeyboardInterrupt):
        T.save(FastRCNN(), fresh, T.TrainConfig(dataset="easy"))
    assert not (fresh / "model.safetensors").exists()
