"""Lines set much denser or wider than the model reads best get a second, rescaled reading
(fedocr.model.reread_off_density), and the more confident reading is kept."""
from pathlib import Path

import cv2
import numpy as np
import pytest

from fedocr.data import SyntheticLines, preprocess
from fedocr.model import Decoded, recognize_lines, reread_off_density
from fedocr.model.infer import DENSITY_TARGET, RESCALE_LIMITS, density_rescale, rescale_line
from fedocr.serve.engine import load_engine
from fedocr.train.metrics import score

BASE_ONNX = Path(__file__).resolve().parents[1] / "models" / "base.onnx"


def decoded(text: str, confidence: float, spans: tuple[tuple[int, int], ...] = ()) -> Decoded:
    return Decoded(text, confidence, tuple(confidence for _ in text), spans)


def test_density_rescale_aims_at_the_target_within_limits_and_leaves_lines_near_it():
    assert density_rescale(120, "abcdefghij") == pytest.approx(DENSITY_TARGET * 10 / 120)   # 12 px/char: 1.0
    assert density_rescale(100, "abcdefghij") == pytest.approx(1.2)          # dense: widen
    assert density_rescale(100, "汉字汉字汉") == pytest.approx(1.2)         # a hanzi counts two
    assert density_rescale(1000, "ab") == RESCALE_LIMITS[0]                  # far too wide: at most the limit
    assert density_rescale(20, "abcdefghij") == RESCALE_LIMITS[1]
    assert density_rescale(125, "abcdefghij") == 1.0                         # within the band: read once
    assert density_rescale(400, "   ") == 1.0 and density_rescale(400, "") == 1.0


def test_a_second_reading_is_kept_only_when_more_confident_and_its_spans_map_back():
    near, dense, wide = (np.zeros((32, w), np.float32) for w in (120, 100, 200))
    first = [decoded("abcdefghij", 0.9), decoded("abcdefghij", 0.5), decoded("abcdefghij", 0.8)]
    asked: list[int] = []

    def read(lines: list[np.ndarray]) -> list[Decoded]:
        asked.extend(line.shape[1] for line in lines)
        return [decoded("abcdefghiij", 0.7, ((20, 21), (29, 29))), decoded("abcdefghi", 0.6)][:len(lines)]

    kept = reread_off_density([near, dense, wide], first, read)
    assert asked == [120, 120]                 # the dense line widened 1.2x, the wide one narrowed 0.6x
    assert kept[0] is first[0] and kept[2] is first[2]    # near the target, or less confident again
    # Spans in steps of the line as given: the columns they covered, none past its last step (24).
    assert kept[1].text == "abcdefghiij" and kept[1].char_spans == ((16, 18), (24, 24))

    def reads_nothing(lines: list[np.ndarray]) -> list[Decoded]:
        return [decoded("", 0.99) for _ in lines]    # a blank's confidence is high on anything

    assert reread_off_density([dense], [first[1]], reads_nothing) == [first[1]]


def test_a_line_too_narrow_to_rescale_is_not_read_again():
    def read(lines: list[np.ndarray]) -> list[Decoded]:
        raise AssertionError("read again for nothing")

    tiny = np.zeros((32, 4), np.float32)
    assert reread_off_density([tiny], [decoded("a", 0.5)], read)[0].text == "a"   # 12 px per char wanted: 4 stays 4


def test_rescale_line_keeps_the_height_and_a_width_the_network_takes():
    line = np.random.default_rng(0).random((32, 101)).astype(np.float32)
    for factor in (0.6, 1.3):
        out = rescale_line(line, factor)
        assert out.shape[0] == 32 and out.shape[1] % 4 == 0 and abs(out.shape[1] - 101 * factor) <= 2
        assert out.min() >= 0 and out.max() <= 1


@pytest.mark.skipif(not BASE_ONNX.is_file(), reason="no shipped base model")
def test_the_shipped_model_reads_lines_squeezed_or_stretched_far_better_with_a_second_reading():
    engine = load_engine(BASE_ONNX)
    samples = [SyntheticLines("public", 60, seed=777)[i] for i in range(60)]
    references = [engine.charset.normalise(text, keep_unknown=True) for _, text in samples]

    def cer(factor: float, reread: bool) -> float:
        lines = [rescale_line(preprocess(image), factor) for image, _ in samples]
        read = recognize_lines(lines, engine.logits_fn, engine.charset, reread=reread)
        return score(zip([d.text for d in read], references)).cer

    for factor in (0.7, 1.4):   # a condensed face or dense office setting; a wide face
        once, twice = cer(factor, False), cer(factor, True)
        assert twice < 0.6 * once, f"x{factor}: CER {once:.4f} read once, {twice:.4f} read twice"
    assert cer(1.0, True) <= cer(1.0, False) + 0.005   # lines as drawn lose (almost) nothing


@pytest.mark.skipif(not BASE_ONNX.is_file(), reason="no shipped base model")
def test_the_engine_rereads_by_default_and_places_characters_on_the_line_as_given():
    engine = load_engine(BASE_ONNX)
    image, text = SyntheticLines("public", 1, seed=5)[0]
    page = cv2.resize(image, (int(image.shape[1] * 0.65), image.shape[0]), interpolation=cv2.INTER_AREA)
    calls: list[int] = []
    logits_fn = engine.logits_fn

    def counted(images: np.ndarray, widths: np.ndarray) -> np.ndarray:
        calls.append(len(images))
        return logits_fn(images, widths)

    engine.logits_fn = counted
    line = engine.ocr(page, layout="line", orient=False).lines[0]
    assert len(calls) == 2, "a line squeezed to 0.65x is read a second time"
    # The kept (widened) reading's characters are placed on the image as given, in order and
    # spread across it, not pushed off its right edge.
    starts = [c.x0 for c in line.chars]
    assert len(starts) > 5 and starts == sorted(starts) and starts[-1] < page.shape[1] - 2
    assert 0.3 < starts[len(starts) // 2] / page.shape[1] < 0.7, (text, line.text, starts)
    engine.reread, calls[:] = False, []
    engine.ocr(page, layout="line", orient=False)
    assert len(calls) == 1
