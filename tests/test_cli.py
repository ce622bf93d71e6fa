"""The `fedocr` command as a user runs it: real processes, real files, exit codes, no partial output."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rapidfuzz.distance import Levenshtein

from fedocr.cli import build_parser, main

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


def test_a_bad_image_is_reported_and_the_other_images_still_get_their_results(tmp_path, capsys):
    from serve_fixtures import dot_grid, random_model

    model = random_model(tmp_path / "m.pt")
    good, bad, missing, grid = (tmp_path / n for n in ("good.png", "notes.png", "missing.png", "grid.png"))
    Image.fromarray(np.full((32, 120), 255, np.uint8)).save(good)
    bad.write_text("hello")
    Image.fromarray(dot_grid(1000)).save(grid)   # 10,000 "lines": refused before any is recognised
    result = fedocr("ocr", "--model", model, "--json", good, bad, missing, grid)
    assert result.returncode == 3, result.stderr
    objects = [json.loads(line) for line in result.stdout.splitlines()]
    assert [o["image"] for o in objects] == [str(good), str(bad), str(missing), str(grid)]
    assert "text" in objects[0] and "lines" in objects[0] and all("error" in o for o in objects[1:])
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 3 and all(line.startswith("fedocr: error: ") for line in errors), result.stderr
    assert "notes.png: not an image" in errors[0] and "missing.png" in errors[1]
    assert "grid.png: more than 500 text lines" in errors[2] and "--max-lines" in errors[2]
    assert main(["ocr", "--model", str(model), "--layout", "line", str(good), str(missing)]) == 3
    plain = capsys.readouterr()
    assert plain.out.startswith(f"==> {good} <==\n") and plain.err.count("fedocr: error: ") == 1
    assert "missing.png" in plain.err


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
    for seed in (1, 1, 2):   # in this process: three `fedocr train` processes cost 40 s of the suite
        out = tmp_path / f"m{len(weights)}.pt"
        assert main(["train", "--data", str(synth_set), "--out", str(out), "--size", "tiny", "--steps", "1",
                     "--batch-size", "4", "--seed", str(seed), "--threads", "1"]) == 0
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
                             "--history", str(history), "--threads", "1"], stderr=subprocess.PIPE, text=True)
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


def in_process(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, list[str]]:
    """`fedocr ARGS` in this process: its exit code and its stderr lines."""
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("args, code, fragment", [
    (["train", "--data", "synth:digits:4", "--out", "{tmp}/m.pt", "--lr", "nan"], 2, "--lr must be a finite"),
    (["train", "--data", "synth:digits:4", "--out", "{tmp}/m.pt", "--lr", "-1"], 2, "--lr must be a finite"),
    (["train", "--data", "synth:digits:4", "--out", "{tmp}/m.pt", "--epochs", "inf"], 2, "--epochs"),
    (["train", "--data", "synth:digits:4", "--out", "/proc/x.pt"], 4, "/proc: output folder is not writable"),
    (["eval", "--data", "{tmp}/none", "--beam", "-1"], 2, "--beam"),
    (["ocr", "{tmp}/none.png", "--beam", "-1"], 2, "--beam"),
    (["ocr", "{tmp}/none.png", "--max-lines", "0"], 2, "--max-lines"),
    (["fl", "certs", "--out", "{tmp}/certs", "--days", "-1"], 2, "--days must be at least 1"),
    (["serve", "--model", "{tmp}/none.onnx", "--token", ""], 2, "--token: the token is empty"),
    (["serve", "--model", "{tmp}/none.onnx", "--token", "a", "--token-file", "{tmp}/t"], 2, "not both"),
    (["serve", "--model", "{tmp}/none.onnx", "--token-file", "{tmp}/empty"], 2, "the token is empty"),
    (["serve", "--model", "{tmp}/none.onnx", "--token-file", "{tmp}/none"], 3, "cannot read"),
    (["serve", "--model", "{tmp}/none.onnx", "--watch", "nan"], 2, "--watch"),
    (["serve", "--model", "{tmp}/none.onnx", "--processes", "0"], 2, "--processes must be at least 1"),
], ids=["lr-nan", "lr-negative", "epochs-inf", "out-in-proc", "eval-beam", "ocr-beam", "max-lines", "cert-days",
        "empty-token", "two-tokens", "empty-token-file", "missing-token-file", "watch-nan",
        "processes-zero"])
def test_options_are_checked_before_any_work(args, code, fragment, tmp_path, capsys):
    (tmp_path / "empty").write_text("\n")
    got, err = in_process(capsys, *(a.format(tmp=tmp_path) for a in args))
    assert got == code and len(err) == 1 and err[0].startswith("fedocr: error: ") and fragment in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]   # nothing written


def test_an_empty_fedocr_token_is_refused_at_start(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FEDOCR_TOKEN", "")
    code, err = in_process(capsys, "serve", "--model", tmp_path / "none.onnx")
    assert code == 2 and err == ["fedocr: error: $FEDOCR_TOKEN: the token is empty (that would be an open server; "
                                 "leave it out to serve without a token)"]


def test_serve_on_a_busy_port_fails_with_one_line_before_saying_it_serves(tmp_path, capsys):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        # No such model either: the port is checked first, before seconds of loading.
        code, err = in_process(capsys, "serve", "--model", tmp_path / "none.onnx", "--port", port)
    assert code == 4 and err == [f"fedocr: error: cannot listen on 127.0.0.1:{port}: Address already in use"]


def test_a_token_file_protects_the_server_and_keeps_the_token_out_of_ps(tmp_path):
    import httpx
    import psutil

    from serve_fixtures import live_server, random_model

    token = "s3cret-from-a-file"
    (tmp_path / "token").write_text(token + "\n")
    with live_server(random_model(tmp_path / "m.pt"), "--token-file", str(tmp_path / "token")) as base:
        assert httpx.get(base + "/api/model").status_code == 401
        assert httpx.get(base + "/api/model", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        commands = [" ".join(c.cmdline()) for c in psutil.Process().children(recursive=True)]
        assert any("--token-file" in c for c in commands) and not any(token in c for c in commands)


def test_fedocr_help_loads_no_heavy_module():
    # `fedocr --help` took 2 s importing torch; sub-commands import what they need when they run.
    probe = ("import sys; from fedocr.cli import build_parser; build_parser().format_help(); "
             "print(sorted(m for m in ('torch', 'cv2', 'onnxruntime', 'fastapi', 'flwr') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr
    usage = fedocr("--help")
    assert usage.returncode == 0 and all(c in usage.stdout for c in ("synth", "train", "ocr", "serve", "fl"))


def _parsers(parser):
    """Every parser under `parser`, each with its arguments added (lazy ones too)."""
    import argparse

    parser.format_help()  # a lazy parser adds its arguments now
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                yield from _parsers(sub)


def test_every_option_has_help_text():
    import argparse

    missing = [f"{parser.prog} {'/'.join(a.option_strings) or a.dest}" for parser in _parsers(build_parser())
               for a in parser._actions
               if not a.help and not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]
    assert missing == []


def test_ocr_reads_folders_pdf_pages_and_stdin_in_order_and_writes_text_tsv_and_annotations(
        trained_digits_model, tmp_path, capsys, monkeypatch):
    import io

    from fedocr.data import SyntheticLines
    lines = SyntheticLines("digits", 4, seed=71, charset=trained_digits_model.charset)
    images = [Image.fromarray(lines[i][0]) for i in range(4)]
    folder = tmp_path / "scans"
    folder.mkdir()
    for i in (0, 1):
        images[i].save(folder / f"line{i}.png")
    (folder / "notes.txt").write_text("not an image")
    images[2].save(tmp_path / "form.pdf", save_all=True, append_images=[images[3]], resolution=72)
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    piped = io.BytesIO()
    images[0].save(piped, "PNG")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(piped.getvalue())))
    model = str(trained_digits_model.path)

    code = main(["ocr", "--model", model, "--json", "--dpi", "72", str(folder), str(tmp_path / "form.pdf"), "-",
                 str(fifo), "--annotate", str(tmp_path / "boxes")])
    out, err = capsys.readouterr()
    assert code == 3 and "Traceback" not in err       # the FIFO was refused, everything else was read
    answers = [json.loads(line) for line in out.splitlines()]
    assert [(Path(a["image"]).name, a.get("page")) for a in answers] == [
        ("line0.png", None), ("line1.png", None), ("form.pdf", 1), ("form.pdf", 2), ("-", None), ("pipe.png", None)]
    assert "not a regular file" in answers[-1]["error"] and "scans: skipped 1 file(s)" in err
    ocr_alone = [json.loads(line)["text"] for line in fedocr("ocr", "--model", model, "--json", *(
        folder / f"line{i}.png" for i in (0, 1))).stdout.splitlines()]
    assert [a["text"] for a in answers[:2]] == ocr_alone and answers[4]["text"] == ocr_alone[0]
    assert sum(a["text"] == lines[i][1] for a, i in zip(answers[2:4], (2, 3))) >= 1   # PDF pages read as text
    drawn = sorted(p.name for p in (tmp_path / "boxes").iterdir())
    assert drawn == ["form-p1.png", "form-p2.png", "line0.png", "line1.png", "stdin.png"]
    assert Image.open(tmp_path / "boxes" / "line0.png").size == images[0].size

    assert main(["ocr", "--model", model, "--format", "tsv", str(folder)]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].startswith("image\tpage\tline\tconfidence") and len(rows) >= 3
    assert all(len(row.split("\t")) == 9 for row in rows)
    assert main(["ocr", "--model", model, str(folder)]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"==> {folder / 'line0.png'} <==\n") and f"\n\n==> {folder / 'line1.png'} <==\n" in text
    assert main(["ocr", "--model", model, "--dpi", "5", str(folder)]) == 2


def test_training_removes_the_temporary_file_a_killed_checkpoint_write_left(synth_set, tmp_path, capsys):
    out = tmp_path / "m.pt"
    stale = tmp_path / ".m.pt.k3j2l1.tmp"
    stale.write_bytes(b"half a checkpoint")
    assert main(["train", "--data", str(synth_set), "--out", str(out), "--size", "tiny", "--steps", "1",
                 "--batch-size", "2", "--threads", "1"]) == 0
    assert not stale.exists() and out.is_file()
    assert "removed 1 temporary file(s)" in capsys.readouterr().err


def test_ocr_reads_a_folder_one_file_at_a_time(tmp_path):
    from fedocr.cli.ocr import expand
    from fedocr.serve.images import Limits

    for name in ("a.png", "b.png"):
        Image.fromarray(np.full((32, 100), 255, np.uint8)).save(tmp_path / name)
    sources = expand([str(tmp_path)], 200, Limits(), stdin=lambda: b"")
    assert next(sources).label.endswith("a.png")
    (tmp_path / "b.png").unlink()             # not read yet: a folder is never in memory at once
    with pytest.raises(Exception, match="b.png: no such file"):
        next(sources).load()


# A real browser-rendered line and its label, read by the shipped model in plumbing tests.
SAMPLE_LINE = Path(__file__).resolve().parents[1] / "bench" / "data" / "browser-lines" / "images" / "000013.png"
SAMPLE_LABEL = "柯达 Picture CD"


def reads_the_sample(text: str) -> bool:
    """A real model read the sample line: within one edit of its label (a re-trained base model
    may miss a character; a stub or the wrong model is far off)."""
    return Levenshtein.distance(text, SAMPLE_LABEL) <= 1


def test_reading_with_an_onnx_model_never_imports_torch():
    # torch cost `fedocr ocr` 2-3 s of start-up and the server 185 MB of memory for nothing.
    probe = ("import sys; from fedocr.cli import main; import fedocr.serve.app; "
             f"code = main(['ocr', {str(SAMPLE_LINE)!r}]); print(code, sorted(m for m in ('torch', 'onnxruntime') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    text, status = result.stdout.strip().splitlines()
    assert reads_the_sample(text) and status == "0 ['onnxruntime']"
