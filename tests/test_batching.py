"""Batched inference: how lines are cut into batches, and that a line reads the same alone or in
any batch (ONNX fp32 and int8, the engine with several runs in flight). A random tiny model is
enough: the property holds for any weights, and it spares these tests the trained fixture."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from fedocr.data import SyntheticLines, preprocess
from fedocr.export import INT8_TOLERANCE, Tolerance, export_onnx, ort_logits_fn_from_path
from fedocr.model import pad_lines
from fedocr.serve.engine import Batching, load_engine, plan_batches
from serve_fixtures import SMALL, random_model

# Random weights give near-uniform outputs whose argmax int8 rounding flips: check log-probs only.
LOOSE = Tolerance(max_logprob_diff=INT8_TOLERANCE.max_logprob_diff, min_text_agreement=0.0)


def mixed_lines(charset, n: int = 20) -> list[np.ndarray]:
    """Rendered lines from short to long (raw images; the engine preprocesses them)."""
    data = SyntheticLines("digits", n, seed=77, charset=charset)
    return [data[i][0] for i in range(n)]


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    out = tmp_path_factory.mktemp("batching")
    model = random_model(out / "m.pt", seed=3)
    lines = [preprocess(c) for c in mixed_lines(SMALL, 4)]
    return {kind: export_onnx(model, out / f"{kind}.onnx", int8=kind == "int8", lines=lines,
                              tolerance=LOOSE if kind == "int8" else None).path for kind in ("fp32", "int8")}


def test_plan_covers_every_line_once_within_its_limits():
    rng = np.random.default_rng(0)
    widths = [int(w) * 4 for w in rng.integers(10, 200, 300)] + [2000]
    plan = Batching(batch_size=16, max_width_ratio=1.25, max_columns=4096)
    batches = plan_batches(widths, plan)
    assert sorted(i for b in batches for i in b) == list(range(len(widths)))
    for batch in batches:
        w = [widths[i] for i in batch]
        assert len(batch) <= 16 and max(w) <= 1.25 * min(w)
        assert len(batch) == 1 or len(batch) * max(w) <= 4096   # a line wider than the cap runs alone
    assert [widths[i] for i in batches[-1]] == [2000]
    assert plan_batches([], plan) == []


def test_plan_without_limits_is_width_sorted_chunks():
    widths = [40, 400, 80, 120, 44]
    assert plan_batches(widths, Batching(batch_size=2, max_width_ratio=100, max_columns=None)) == [[0, 4], [2, 3], [1]]


@pytest.mark.parametrize("kind", ["fp32", "int8"])
def test_logits_of_a_line_do_not_depend_on_its_batch(exports, kind):
    """Padding is masked and an int8 export quantises activations per line, so each line's
    logits are bit-identical alone and beside any other lines."""
    run = ort_logits_fn_from_path(exports[kind])
    lines = [preprocess(c) for c in mixed_lines(SMALL)]
    alone = [run(*pad_lines([line]))[0] for line in lines]
    for batch in (list(range(len(lines))), [0, 5, 9], [19, 1]):
        images, widths = pad_lines([lines[i] for i in batch])
        logits = run(images, widths)
        for row, i in enumerate(batch):
            steps = int(widths[row]) // 4
            assert np.array_equal(logits[row, :steps], alone[i][:steps]), (kind, batch, i)


def test_int8_export_has_no_batch_wide_quantisation(exports):
    ops = {node.op_type for node in onnx.load(str(exports["int8"])).graph.node}
    assert "MatMulInteger" in ops and "QuantizeLinear" in ops
    assert not ops & {"DynamicQuantizeLinear", "DynamicQuantizeLSTM", "DynamicQuantizeMatMul"}


@pytest.mark.parametrize("kind", ["fp32", "int8"])
@pytest.mark.parametrize("workers", [1, 2])
def test_engine_reads_each_line_the_same_in_any_batch(exports, kind, workers):
    engine = load_engine(exports[kind], threads=2,
                         batching=Batching(batch_size=4, max_width_ratio=1.25, max_columns=2048, workers=workers))
    crops = mixed_lines(SMALL)
    alone = [engine.recognize([c])[0] for c in crops]
    together = engine.recognize(crops)
    assert [d.text for d in together] == [d.text for d in alone]
    assert [d.char_confidences for d in together] == [d.char_confidences for d in alone]
    assert [d.text for d in engine.recognize(crops[::-1])] == [d.text for d in alone][::-1]
