"""The `fedocr` command as a user runs it: real processes, real files, exit codes, no partial output."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

FEDOCR = [sys.executable, "-m", "fedocr"]


def fedocr(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FEDOCR, *map(str, args)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def one_line_error(result: subprocess.CompletedProcess[str], code: int, fragment: str) -> None:
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedocr: error: "), result.stderr
    assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def synth_set(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "bank"
    result = fedocr("synth", "--preset", "bank", "--n", "12", "--seed", "3", "--out", out)
    assert result.returncode == 0, result.stderr
    return out


def test_synth_writes_images_and_labels(synth_set):
    rows = (synth_set / "labels.tsv").read_text(encoding="utf-8").splitlines()
    assert len(rows) == 12 and len(list((synth_set / "images").glob("*.png"))) == 12
    assert all((synth_set / row.split("\t")[0]).is_file() and row.split("\t")[1] for row in rows)


def test_synth_through_a_device_keeps_the_labels_and_changes_the_look(synth_set, tmp_path):
    from PIL import Image

    result = fedocr("synth", "--preset", "bank", "--n", "12", "--seed", "3", "--device", "fax", "--out", tmp_path / "fax")
    assert result.returncode == 0 and "through a fax device" in result.stderr, result.stderr
    assert (tmp_path / "fax" / "labels.tsv").read_text(encoding="utf-8") == (synth_set / "labels.tsv").read_text(encoding="utf-8")
    faxed = np.asarray(Image.open(tmp_path / "fax" / "images" / "000000.png"))
    assert set(np.unique(faxed)) <= {0, 255}                       # a fax is black and white
    unknown = fedocr("synth", "--preset", "bank", "--n", "2", "--device", "laser", "--out", tmp_path / "x")
    assert unknown.returncode == 2 and "invalid choice: 'laser'" in unknown.stderr and not (tmp_path / "x").exists()


def test_ocr_json_lines_in_input_order(trained_digits_model, tmp_path):
    from fedocr.data import SyntheticLines
    data = SyntheticLines("digits", 3, seed=41, charset=trained_digits_model.charset)
    import cv2
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"line{i}.png")
        cv2.imwrite(str(paths[-1]), data[i][0])
    result = fedocr("ocr", "--model", trained_digits_model.path, "--json", *paths)
    assert result.returncode == 0, result.stderr
    objects = [json.loads(line) for line in result.stdout.splitlines()]
    assert [o["image"] for o in objects] == [str(p) for p in paths]
    for obj, i in zip(objects, range(3)):
        assert set(obj) >= {"image", "text", "confidence", "lines"}
        assert obj["lines"][0]["box"][2:] == list(data[i][0].shape[::-1])
        assert "".join(c["char"] for c in obj["lines"][0]["chars"]) == obj["lines"][0]["text"]
        assert 0 <= obj["confidence"] <= 1
    assert sum(o["text"] == data[i][1] for i, o in enumerate(objects)) >= 2


def test_eval_json_reports_cer_accuracy_count_and_speed(trained_digits_model, tmp_path):
    out = tmp_path / "test"
    assert fedocr("synth", "--preset", "digits", "--n", "20", "--seed", "8", "--out", out).returncode == 0
    # `synth` renders with the default vocabulary's text generator; the small model knows all of it
    result = fedocr("eval", "--model", trained_digits_model.path, "--data", out, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)["datasets"][0]
    assert report["n"] == 20 and 0 <= report["cer"] < 0.2 and report["ms_per_line"] > 0
    assert set(report) >= {"cer", "line_accuracy", "n", "ms_per_line"}


def test_train_writes_a_resumable_checkpoint_and_resumes(synth_set, tmp_path):
    model = tmp_path / "m.pt"
    first = fedocr("train", "--data", synth_set, "--out", model, "--size", "tiny", "--steps", "2", "--batch-size", "4")
    assert first.returncode == 0, first.stderr
    assert "trained 2 steps" in first.stderr
    again = fedocr("train", "--data", synth_set, "--out", model)
    assert again.returncode == 0 and "resuming" in again.stderr and "trained 0 steps" in again.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]                      # no temporary files left


def test_missing_image_is_exit_3(trained_digits_model, tmp_path):
    one_line_error(fedocr("ocr", "--model", trained_digits_model.path, tmp_path / "nope.png"), 3, "nope.png")


def test_not_an_image_is_exit_3_and_prints_no_partial_results(trained_digits_model, tmp_path, synth_set):
    bad = tmp_path / "notes.png"
    bad.write_text("hello")
    result = fedocr("ocr", "--model", trained_digits_model.path, "--json", synth_set / "images" / "000000.png", bad)
    one_line_error(result, 3, "notes.png: not a readable image")
    assert result.stdout == ""


@pytest.mark.parametrize("labels, fragment", [("", "no labelled lines"), ("x.png 金额\n", "expected 'image-path<TAB>text'")])
def test_empty_or_malformed_labels_are_exit_3(tmp_path, labels, fragment):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "labels.tsv").write_text(labels, encoding="utf-8")
    result = fedocr("train", "--data", tmp_path / "data", "--out", tmp_path / "m.pt", "--steps", "1")
    one_line_error(result, 3, fragment)
    assert not (tmp_path / "m.pt").exists()


def test_unknown_preset_is_a_usage_error(tmp_path):
    result = fedocr("synth", "--preset", "pharmacy", "--n", "3", "--out", tmp_path / "x")
    assert result.returncode == 2 and "invalid choice: 'pharmacy'" in result.stderr
    assert not (tmp_path / "x").exists()


def test_checkpoint_of_another_vocabulary_is_exit_3(trained_digits_model, synth_set, tmp_path):
    # fine-tuning needs the default vocabulary; the test model has a 22-character one
    result = fedocr("train", "--data", synth_set, "--out", tmp_path / "m.pt", "--init", trained_digits_model.path)
    one_line_error(result, 3, "expected")
    assert not (tmp_path / "m.pt").exists()


def test_unwritable_output_folder_is_exit_4(synth_set, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):  # root ignores permissions: use a path under a file instead
            target = tmp_path / "a-file"
            target.write_text("x")
            out = target / "sub" / "m.pt"
        else:
            out = locked / "m.pt"
        result = fedocr("train", "--data", synth_set, "--out", out, "--steps", "1")
        one_line_error(result, 4, "")
        synth = fedocr("synth", "--preset", "bank", "--n", "2", "--out", out.parent / "set")
        one_line_error(synth, 4, "")
    finally:
        locked.chmod(0o700)


def test_no_model_anywhere_is_a_clear_error(tmp_path, monkeypatch):
    from fedocr.cli import common
    from fedocr.model import shipped
    monkeypatch.delenv("FEDOCR_MODEL", raising=False)
    monkeypatch.setattr(shipped, "shipped_folders", lambda: [tmp_path])  # no package copy, no checkout models/
    with pytest.raises(common.CliError, match="no --model given"):
        common.default_model()


@pytest.mark.parametrize("flags, fragment", [(["--batch-size", "0"], "batch_size"), (["--lr", "0"], "lr"),
                                             (["--seed", "-1"], "seed")])
def test_impossible_training_settings_are_usage_errors(synth_set, tmp_path, flags, fragment):
    one_line_error(fedocr("train", "--data", synth_set, "--out", tmp_path / "m.pt", *flags), 2, fragment)
    assert not (tmp_path / "m.pt").exists()


def test_bad_synthetic_spec_is_a_usage_error(tmp_path):
    one_line_error(fedocr("train", "--data", "synth:pharmacy:10", "--out", tmp_path / "m.pt"), 2, "unknown preset")
    one_line_error(fedocr("train", "--data", "synth:digits:0", "--out", tmp_path / "m.pt"), 2, "synth:digits:0")


def test_seed_decides_the_initial_weights(synth_set, tmp_path):
    import torch
    from fedocr.model import load_checkpoint
    weights = []
    for seed in (1, 1, 2):
        out = tmp_path / f"m{len(weights)}.pt"
        result = fedocr("train", "--data", synth_set, "--out", out, "--size", "tiny", "--steps", "1",
                        "--batch-size", "4", "--seed", str(seed))
        assert result.returncode == 0, result.stderr
        weights.append(load_checkpoint(out).model.head.weight)
    assert torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], weights[2])


def test_eval_and_ocr_use_the_default_model_through_onnx(trained_digits_model, tmp_path):
    onnx_path = tmp_path / "default.onnx"
    assert fedocr("export", trained_digits_model.path, onnx_path).returncode == 0
    data = tmp_path / "set"
    assert fedocr("synth", "--preset", "digits", "--n", "5", "--seed", "4", "--out", data).returncode == 0
    env = {"FEDOCR_MODEL": str(onnx_path)}
    result = fedocr("eval", "--data", data, "--json", env=env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["backend"] == "onnx" and report["model"] == str(onnx_path) and report["datasets"][0]["n"] == 5
    ocr = fedocr("ocr", data / "images" / "000000.png", env=env)
    assert ocr.returncode == 0 and ocr.stdout.strip()


def test_sigterm_during_training_saves_a_resumable_checkpoint(synth_set, tmp_path):
    import signal
    import time
    from fedocr.model import load_checkpoint
    out = tmp_path / "m.pt"
    history = tmp_path / "history.jsonl"
    proc = subprocess.Popen([*FEDOCR, "train", "--data", str(synth_set), "--out", str(out), "--size", "tiny",
                             "--steps", "100000", "--batch-size", "2", "--checkpoint-every", "100000",
                             "--history", str(history)], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None and not (history.exists() and history.stat().st_size):
            time.sleep(0.5)  # the first history point (step 50) says training is under way
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert out.is_file(), proc.stderr.read()
    assert load_checkpoint(out).training["step"] > 0
