"""Whole-page OCR: pages split into lines (rules ignored, small skew corrected), measured on
rendered documents whose text and line positions are known."""
from __future__ import annotations

import numpy as np
import pytest
from rapidfuzz.distance import Levenshtein

from fedocr.serve.segment import split_lines
from serve_fixtures import iou, render_page


def matched(page, crops, threshold: float = 0.5) -> int:
    return sum(max((iou(b, c.box) for c in crops), default=0.0) >= threshold for b in page.boxes)


def test_single_line_image_is_one_line_with_the_whole_image_as_box():
    from fedocr.data import SyntheticLines
    image, _ = SyntheticLines("digits", 1, seed=5)[0]
    crops = split_lines(image)
    assert len(crops) == 1
    assert crops[0].box == (0, 0, image.shape[1], image.shape[0])


def test_blank_image_has_no_lines():
    assert split_lines(np.full((300, 400), 250, np.uint8)) == []


def test_tiny_image_is_recognised_as_one_line():
    assert len(split_lines(np.zeros((1, 1), np.uint8))) == 1


def test_page_splits_into_its_lines_in_reading_order():
    page = render_page(6, seed=3, rules=False)
    crops = split_lines(page.image)
    assert len(crops) == len(page.boxes)
    assert matched(page, crops) == len(page.boxes)
    # reading order: rows top to bottom, segments of a row left to right
    keys = [(c.row, c.box[0]) for c in crops]
    assert keys == sorted(keys)
    assert [iou(b, c.box) >= 0.5 for b, c in zip(page.boxes, crops)] == [True] * len(crops)


def test_table_rules_and_frames_do_not_become_lines():
    page = render_page(6, seed=4, rules=True)
    crops = split_lines(page.image)
    assert len(crops) == len(page.boxes)
    assert matched(page, crops) == len(page.boxes)


def test_side_by_side_fields_are_separate_segments_of_one_row():
    page = render_page(4, seed=6, two_columns=True, rules=False)
    crops = split_lines(page.image)
    rows = [c.row for c in crops]
    assert len(set(rows)) == len(page.texts)
    assert [rows.count(r) for r in sorted(set(rows))] == [len(t) for t in page.texts]


@pytest.mark.parametrize("angle", [-3.0, -1.5, 2.0, 4.0])
def test_small_skew_is_corrected_and_boxes_map_back_to_the_input(angle):
    page = render_page(6, seed=7, rules=True, angle=angle)
    crops = split_lines(page.image)
    assert len(crops) == len(page.boxes)
    assert matched(page, crops, threshold=0.45) == len(page.boxes)


@pytest.mark.slow
def test_rendered_documents_are_read_line_by_line(trained_digits_model, tmp_path):
    """Page OCR end to end: segmentation + recognition on rendered forms with rules and skew,
    against the known text. The line-level reference is the same lines recognised alone."""
    from fedocr.serve.engine import Engine, ModelInfo
    from fedocr.model import torch_logits_fn

    info = ModelInfo("digits.pt", "torch", "test", len(trained_digits_model.charset), "", "fp32")
    engine = Engine(torch_logits_fn(trained_digits_model.model), trained_digits_model.charset, info)
    errors = chars = 0
    for seed, angle in [(11, 0.0), (12, 1.5), (13, -2.5)]:
        page = render_page(6, seed=seed, rules=True, angle=angle)
        result = engine.ocr(page.image)
        truth = "\n".join(" ".join(row) for row in page.texts)
        errors += Levenshtein.distance(result.text, truth)
        chars += len(truth)
        assert len(result.lines) == len(page.boxes)
        assert all(0 <= line.confidence <= 1 for line in result.lines)
    cer = errors / chars
    print(f"page CER {cer:.3f} over {chars} characters")
    assert cer < 0.15
