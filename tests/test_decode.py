import numpy as np
import pytest

from fedocr.charset import Charset
from fedocr.model import beam_search, greedy_decode

CHARSET = Charset(list("ab"))  # classes: 0 blank, 1 'a', 2 'b'


def _log_probs(rows: list[list[float]]) -> np.ndarray:
    return np.log(np.asarray(rows, dtype=np.float64))


def test_greedy_merges_repeats_and_drops_blanks():
    lp = _log_probs([[0.1, 0.8, 0.1], [0.1, 0.8, 0.1], [0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]])
    decoded = greedy_decode(lp, 5, CHARSET)
    assert decoded.text == "aab"
    assert decoded.char_confidences == pytest.approx((0.8, 0.8, 0.8))
    assert decoded.confidence == pytest.approx(0.8)


def test_greedy_ignores_timesteps_past_the_length():
    lp = _log_probs([[0.1, 0.8, 0.1], [0.1, 0.1, 0.8]])
    assert greedy_decode(lp, 1, CHARSET).text == "a"


def test_beam_search_agrees_with_greedy_on_a_confident_path():
    rng = np.random.default_rng(0)
    probs = np.full((12, 3), 0.02)
    probs[np.arange(12), rng.integers(0, 3, 12)] = 0.96
    lp = np.log(probs / probs.sum(1, keepdims=True))
    assert beam_search(lp, 12, CHARSET).text == greedy_decode(lp, 12, CHARSET).text


def test_beam_search_finds_the_more_probable_labelling_that_greedy_misses():
    # Best path is blank-blank (""), but "a" has total probability 1 - 0.6*0.6 = 0.64.
    lp = _log_probs([[0.6, 0.4, 1e-9], [0.6, 0.4, 1e-9]])
    assert greedy_decode(lp, 2, CHARSET).text == ""
    beam = beam_search(lp, 2, CHARSET, beam_width=4)
    assert beam.text == "a"
    assert 0 < beam.confidence <= 1


def test_empty_line_confidence_is_the_blank_probability():
    lp = _log_probs([[0.9, 0.05, 0.05], [0.7, 0.2, 0.1]])
    assert greedy_decode(lp, 2, CHARSET).confidence == pytest.approx(0.8)


def test_greedy_and_beam_search_agree_on_where_each_character_fired() -> None:
    charset, a, b = CHARSET, 1, 2
    steps = [0, a, a, 0, b, 0, 0, a]            # blank a a blank b blank blank a
    log_probs = np.full((len(steps), len(charset)), np.log(0.01 / (len(charset) - 1)))
    for t, k in enumerate(steps):
        log_probs[t, k] = np.log(0.99)
    greedy, beam = greedy_decode(log_probs, len(steps), charset), beam_search(log_probs, len(steps), charset)
    assert greedy.text == beam.text == "aba"
    assert greedy.char_spans == beam.char_spans == ((1, 2), (4, 4), (7, 7))
