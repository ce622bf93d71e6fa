"""The shipped base model: it loads with the default vocabulary, its ONNX export matches it, it
reads real (browser-rendered) text, and the CLI uses it when no model is given."""
import json
from pathlib import Path

import pytest

from fedocr.charset import default_charset
from fedocr.data import open_dataset
from fedocr.model import load_checkpoint
from fedocr.serve.engine import load_engine
from fedocr.train import evaluate
from test_cli import SAMPLE_LINE, fedocr, reads_the_sample

ROOT = Path(__file__).resolve().parents[1]
BASE_PT, BASE_ONNX = ROOT / "models" / "base.pt", ROOT / "models" / "base.onnx"
BROWSER_LINES = ROOT / "bench" / "data" / "browser-lines"
pytestmark = pytest.mark.skipif(not BASE_PT.is_file(), reason="no shipped base model")


def test_shipped_checkpoint_and_export_carry_the_default_vocabulary_and_stay_compact():
    charset = default_charset()
    ckpt = load_checkpoint(BASE_PT, expect_charset=charset)
    assert ckpt.model.config.num_classes == len(charset) and ckpt.training is None
    info = load_engine(BASE_ONNX).info
    assert info.backend == "onnx" and info.charset_version == charset.version
    assert info.provenance["export"]["parity"]["passed"]
    for path in (BASE_PT, BASE_ONNX):
        assert path.stat().st_size < 25e6


def test_shipped_model_reads_real_browser_rendered_lines():
    engine = load_engine(BASE_ONNX)
    report = evaluate(engine.logits_fn, engine.charset, open_dataset(BROWSER_LINES))
    assert report.n == 160
    assert report.cer < 0.10, f"CER {report.cer:.4f} on browser-lines (7.4% when shipped)"


def test_ocr_without_a_model_uses_the_shipped_one(tmp_path):
    result = fedocr("ocr", "--json", SAMPLE_LINE, env={"FEDOCR_MODEL": ""})
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert reads_the_sample(answer["text"])


@pytest.mark.parametrize("name", ["browser-lines", "browser-lines-wide", "office-lines"])
def test_external_check_sets_load_and_every_label_is_readable(name):
    lines = open_dataset(ROOT / "bench" / "data" / name)
    charset = default_charset()
    texts = list(lines.texts())
    assert len(texts) >= 160 and all(t and charset.normalise(t) == t for t in texts)
    image, _ = lines[0]
    assert image.ndim == 2 and (image < 128).any()
