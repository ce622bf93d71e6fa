import numpy as np
import pytest
import torch

from fedocr.charset import Charset
from fedocr.data import SyntheticLines, preprocess
from fedocr.model import (CRNN, CheckpointError, ModelConfig, compact_checkpoint, load_checkpoint, pad_lines,
                          recognize_lines, save_checkpoint, torch_logits_fn)
from fedocr.model.checkpoint import provenance


def _lines(charset: Charset, n: int = 6) -> list[np.ndarray]:
    data = SyntheticLines("digits", n, seed=5, charset=charset)
    return [preprocess(data[i][0]) for i in range(n)]


@pytest.mark.parametrize("size", ["tiny", "small", "base"])
def test_sizes_reduce_height_to_one_and_width_by_four(size):
    model = CRNN(ModelConfig(50, size)).eval()
    logits = model(torch.zeros(2, 1, 32, 200), torch.tensor([200, 120]))
    assert logits.shape == (2, 50, 50)


def test_padding_does_not_change_logits_or_decoded_text(trained_digits_model):
    model, charset = trained_digits_model.model, trained_digits_model.charset
    line = _lines(charset, 1)[0]
    w = line.shape[1]
    alone = model(torch.from_numpy(line[None, None]), torch.tensor([w]))
    for extra in (4, 40, 400):
        padded = np.pad(line, ((0, 0), (0, extra)))
        out = model(torch.from_numpy(padded[None, None]), torch.tensor([w]))
        torch.testing.assert_close(out[:, : w // 4], alone, atol=1e-4, rtol=1e-4)


def test_batched_and_single_line_results_match(trained_digits_model):
    model, charset = trained_digits_model.model, trained_digits_model.charset
    lines = _lines(charset, 8)
    run = torch_logits_fn(model)
    batched = recognize_lines(lines, run, charset, batch_size=8)
    single = [recognize_lines([line], run, charset, batch_size=1)[0] for line in lines]
    assert [d.text for d in batched] == [d.text for d in single]
    assert np.allclose([d.confidence for d in batched], [d.confidence for d in single], atol=1e-4)


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path, trained_digits_model):
    model, charset = trained_digits_model.model, trained_digits_model.charset
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, charset, provenance(kind="unit-test"))
    loaded = load_checkpoint(path, expect_charset=charset)
    images, widths = pad_lines(_lines(charset, 3))
    with torch.inference_mode():
        a = model(torch.from_numpy(images), torch.from_numpy(widths))
        b = loaded.model(torch.from_numpy(images), torch.from_numpy(widths))
    torch.testing.assert_close(a, b)
    assert loaded.charset == charset and loaded.config == model.config
    assert loaded.provenance["kind"] == "unit-test" and "created" in loaded.provenance


def test_compact_fp16_checkpoint_is_smaller_reads_the_same_and_keeps_its_provenance(tmp_path, trained_digits_model):
    model, charset = trained_digits_model.model, trained_digits_model.charset
    save_checkpoint(tmp_path / "full.pt", model, charset, {"kind": "unit-test"}, training={"step": 3})
    written = compact_checkpoint(tmp_path / "full.pt", tmp_path / "half.pt", shipped_from="full.pt")
    assert (tmp_path / "half.pt").stat().st_size < 0.6 * (tmp_path / "full.pt").stat().st_size
    half = load_checkpoint(tmp_path / "half.pt")
    assert half.training is None
    assert half.provenance == written and written["kind"] == "unit-test" and written["shipped_from"] == "full.pt"
    lines = _lines(charset, 6)
    full_read = recognize_lines(lines, torch_logits_fn(model), charset)
    half_read = recognize_lines(lines, torch_logits_fn(half.model), charset)
    assert [d.text for d in full_read] == [d.text for d in half_read]


def test_checkpoint_of_another_vocabulary_is_refused(tmp_path, trained_digits_model):
    save_checkpoint(tmp_path / "m.pt", trained_digits_model.model, trained_digits_model.charset)
    with pytest.raises(CheckpointError, match="charset"):
        load_checkpoint(tmp_path / "m.pt", expect_charset=Charset(list("xyz")))


def test_corrupt_or_foreign_files_are_clear_checkpoint_errors(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a fedocr checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="no such"):
        load_checkpoint(tmp_path / "missing.pt")


def test_weights_of_another_shape_are_refused(tmp_path):
    charset = Charset(list("abc"))
    save_checkpoint(tmp_path / "m.pt", CRNN(ModelConfig(len(charset), "tiny")), charset)
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    payload["config"]["size"] = "small"
    torch.save(payload, tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(tmp_path / "m.pt")


def test_model_is_ready_for_opacus():
    model = CRNN(ModelConfig(30, "tiny", norm="group"))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert not any(getattr(m, "inplace", False) for m in model.modules())
    assert model.rnn.batch_first and model.head.in_features == 2 * model.rnn.hidden_size
    logits = model(torch.rand(2, 1, 32, 64), torch.tensor([64, 32]))
    assert logits.shape == (2, 16, 30)
