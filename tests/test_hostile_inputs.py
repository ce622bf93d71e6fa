"""Every input of the hostile corpus (tests/hostile_inputs.py) through the API and the CLI: each
ends in a result or a clear one-line 4xx / exit 3, never a 5xx or a traceback."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from fedocr.cli import main
from fedocr.serve.app import ServeConfig, create_app
from hostile_inputs import hostile_corpus
from serve_fixtures import random_model

CORPUS = hostile_corpus()


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_model(tmp_path_factory.mktemp("hostile") / "model.pt")


@pytest.mark.slow
def test_the_api_answers_every_hostile_input_with_a_result_or_a_clear_4xx(model: Path) -> None:
    with TestClient(create_app(ServeConfig(model=model)), raise_server_exceptions=False) as client:
        for name, data in CORPUS.items():
            r = client.post("/api/ocr", files={"image": (name, data, "application/octet-stream")})
            assert r.status_code < 500, (name, r.status_code, r.text)
            if r.status_code >= 400:
                detail = r.json()["detail"]
                assert isinstance(detail, str) and "\n" not in detail and "Traceback" not in detail, (name, detail)
            else:
                assert isinstance(r.json()["text"], str), name


@pytest.mark.slow
def test_the_cli_reads_the_corpus_in_one_call_reporting_each_bad_file_and_keeping_the_good_ones(
        model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = []
    for name, data in CORPUS.items():
        path = tmp_path / f"{name}.img"
        path.write_bytes(data)
        paths.append(path)
    code = main(["ocr", *map(str, paths), "--json", "--model", str(model)])
    out, err = capsys.readouterr()
    assert code == 3 and "Traceback" not in err and "Traceback" not in out   # exit 3: some inputs were bad
    answers = {Path(a["image"]).stem: a for a in map(json.loads, out.splitlines())}
    assert set(answers) == set(CORPUS)                       # every file answered, in one run
    failed = {name for name, a in answers.items() if "error" in a}
    assert {"bomb-header", "empty", "random-bytes", "text-file", "truncated-png", "dot-grid-1000"} <= failed
    assert {"one-pixel", "gray16-png", "float-tiff-with-nan", "cmyk-jpeg", "animated-gif"}.isdisjoint(failed)
    assert all("\n" not in a["error"] for name, a in answers.items() if name in failed)
