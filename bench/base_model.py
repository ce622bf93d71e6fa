"""How well base models read, and how fast, on every evaluation set, side by side with the best
peer we know of.

    .venv/bin/python bench/base_model.py [--models models/base.onnx] [--n 300]
    .venv/bin/python bench/base_model.py --models before=models/base.onnx,after=NEW.onnx

Evaluation sets (none is used for training):
- external sets, drawn by renderers that are not ours, from real text (every folder under
  bench/data with a labels.tsv): `browser-lines` (zh_CN translations, Chromium, 160 lines),
  `browser-lines-wide` (Chinese, English and mixed lines in many faces, weights, sizes and zooms,
  Chromium; bench/make_browser_lines.py) and `office-lines` (LibreOffice -> PDF -> poppler at
  150-300 dpi, some underlined, in table cells, blurred and JPEG'd; bench/make_office_lines.py);
- the test split of each preset (hospital, bank, school, logistics, public), rendered with seeds
  that training never uses;
- `heldout-font`: public-preset text rendered only with LXGW WenKai, a family kept out of training;
- length buckets (1-5, 6-20, 21+ characters) over all synthetic sets together.

Every model given with --models is scored on every set (fedocr.train.evaluate: labels and
predictions in the vocabulary's forms, so `，` and `,` differ), read as the service reads: a line
set much denser or wider than the model reads best is read a second time, rescaled, and the more
confident reading kept (`fedocr.model.reread_off_density`; `--single-pass also` scores each model
read once too, `--single-pass only` only that way). On the external sets the models
and the peer are also scored side by side with one normalisation for all (NFKC, whitespace
stripped at the ends, as the base-model issue's figures were): the peer is RapidOCR
(bench/requirements-peers.txt; PP-OCRv6 small, models inside the wheel), in recognition-only
mode (`use_det=False, use_cls=False`: each line image goes straight to its recogniser). Without
rapidocr installed the peer column is skipped with a note.
Prints the tables and writes bench/results/base_model.json: per model every set's report, the
side-by-side scores, ONNX Runtime batch-1 latency on a 32x320 line, and `checks`, one boolean per
target (the absolute CER targets use the stricter vocabulary-form CER, the peer ratio the
shared NFKC one; top-level `checks` are the last model's, i.e. the candidate's).
"""
from __future__ import annotations

import argparse
import importlib.metadata
import sys
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from rapidfuzz.distance import Levenshtein

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA, external_set_dirs, median_seconds, print_table, write_result  # noqa: E402

from fedocr.data import InMemoryLines, LineDataset, SyntheticLines, open_dataset  # noqa: E402
from fedocr.serve.engine import Engine, load_engine  # noqa: E402
from fedocr.train import EvalReport, evaluate, score  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TEST_SEEDS = {"hospital": 10_001, "bank": 10_002, "school": 10_003, "logistics": 10_004, "public": 10_005}
TARGETS = {"public_cer": 0.02, "heldout_font_cer": 0.05, "bucket_vs_overall": 2.0, "ort_b1_ms": 6.0,
           "external_cer": 0.02, "vs_peer": 2.0, "domain_cer": 0.02}

TOP_EDITS = 12

Reader = Callable[[Sequence[np.ndarray]], list[str]]


@dataclass(frozen=True)
class SideBySide:
    """One reader on one set under the shared normalisation."""

    cer: float
    cer_no_spaces: float   # all whitespace removed from both sides: spacing conventions aside
    line_accuracy: float
    n: int
    ms_per_line: float
    by_group: dict[str, float]  # CER per kind of text (zh_ui, en_prose, mixed, ...) and setting, where meta.tsv says
    group_lines: dict[str, int]  # lines in each group
    top_edits: list[tuple[str, int]]  # the commonest edits from reference to reading: "s→S", "del ' '", "ins 't'"


def top_edits(pairs: Sequence[tuple[str, str]], k: int = TOP_EDITS) -> list[tuple[str, int]]:
    """The k commonest character edits that turn each reference into its reading (prediction)."""
    counts: Counter[str] = Counter()
    for prediction, reference in pairs:
        for op in Levenshtein.editops(reference, prediction):
            if op.tag == "replace":
                counts[f"{reference[op.src_pos]}→{prediction[op.dest_pos]}"] += 1
            elif op.tag == "delete":
                counts[f"del {reference[op.src_pos]!r}"] += 1
            else:
                counts[f"ins {prediction[op.dest_pos]!r}"] += 1
    return counts.most_common(k)


def shared_form(text: str) -> str:
    return unicodedata.normalize("NFKC", text).strip()


def side_by_side(read: Reader, dataset: LineDataset, groups: Sequence[tuple[str, ...]] = ()) -> SideBySide:
    images = [image for image, _ in dataset]
    start = time.perf_counter()
    predictions = read(images)
    elapsed = time.perf_counter() - start
    pairs = [(shared_form(p), shared_form(r)) for p, r in zip(predictions, dataset.texts())]
    plain = score(pairs)
    squeezed = score(("".join(p.split()), "".join(r.split())) for p, r in pairs)
    names = sorted(set().union(*groups))
    by_group = {g: score(pair for pair, of in zip(pairs, groups) if g in of).cer for g in names}
    group_lines = {g: sum(g in of for of in groups) for g in names}
    return SideBySide(plain.cer, squeezed.cer, plain.line_accuracy, plain.n, 1000 * elapsed / max(len(images), 1),
                      by_group, group_lines, top_edits(pairs))


def fedocr_reader(engine: Engine) -> Reader:
    return lambda images: [d.text for d in engine.recognize(images)]


def rapidocr_reader(threads: int) -> tuple[Reader, dict[str, str]] | str:
    """The peer as a Reader plus what it is, or why it is not there."""
    try:
        from rapidocr import RapidOCR
    except ImportError:
        return "rapidocr is not installed (.venv/bin/pip install -r bench/requirements-peers.txt)"
    engine = RapidOCR(params={"Global.log_level": "warning", "EngineConfig.onnxruntime.intra_op_num_threads": threads,
                              "EngineConfig.onnxruntime.inter_op_num_threads": 1})

    def read(images: Sequence[np.ndarray]) -> list[str]:
        out = []
        for image in images:
            bgr = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image
            result = engine(bgr, use_det=False, use_cls=False, use_rec=True)
            out.append("".join(getattr(result, "txts", None) or ()))
        return out

    rec = engine.cfg.Rec
    return read, {"name": "rapidocr", "version": importlib.metadata.version("rapidocr"),
                  "recogniser": " ".join(str(getattr(v, "value", v))  # config values may be enums
                                         for v in (rec.ocr_version, rec.model_type, rec.engine_type)),
                  "mode": "recognition only (use_det=False, use_cls=False), one line image per call",
                  "threads": str(threads)}


def synthetic_sets(n: int) -> list[LineDataset]:
    sets: list[LineDataset] = [SyntheticLines(p, n, seed=s) for p, s in TEST_SEEDS.items()]
    sets.append(SyntheticLines("public", n, seed=10_006, held_out_fonts=True))
    return [InMemoryLines(s) for s in sets]


def external_sets() -> list[LineDataset]:
    return [InMemoryLines(open_dataset(folder)) for folder in external_set_dirs()]


def line_groups(dataset: LineDataset) -> list[tuple[str, ...]]:
    """The groups each line is scored in besides the whole set, from the set's meta.tsv (one row
    per line, in order; empty without one): its `kind` of text, and where the set says whether
    it was set in a table cell or underlined, "cell/underline" or "no cell/underline"."""
    meta = DATA / dataset.name / "meta.tsv"
    if not meta.is_file():
        return []
    header, *rows = [r.split("\t") for r in meta.read_text(encoding="utf-8").splitlines()]
    ruled = [header.index(c) for c in ("table", "underline") if c in header]

    def groups(row: list[str]) -> tuple[str, ...]:
        setting = (("cell/underline" if any(row[i] == "1" for i in ruled) else "no cell/underline"),) if ruled else ()
        return (row[header.index("kind")], *setting)
    return [groups(r) for r in rows]


def parse_models(spec: str) -> list[tuple[str, Path]]:
    """`a.onnx,b.onnx` or `before=a.onnx,after=b.onnx` -> [(label, path)], labels unique."""
    models: list[tuple[str, Path]] = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        label, _, path = item.rpartition("=")
        label = label or Path(path).stem
        if label in {m[0] for m in models}:
            label = f"{label}#{len(models) + 1}"
        models.append((label, Path(path)))
    if not models:
        raise SystemExit("--models: no model given")
    return models


def batch1_ms(engine: Engine) -> float:
    line = np.zeros((1, 1, 32, 320), np.float32)
    line[0, 0, 8:24, 10:300] = 1.0
    widths = np.array([320], np.int64)
    return 1000 * median_seconds(lambda: engine.logits_fn(line, widths), repeats=200, warmup=10)


def score_model(engine: Engine, synthetic: list[LineDataset], external: list[LineDataset],
                peer: dict[str, SideBySide]) -> dict[str, Any]:
    reports = [evaluate(engine.logits_fn, engine.charset, d, reread=engine.reread) for d in synthetic + external]
    shared = {d.name: side_by_side(fedocr_reader(engine), d, line_groups(d)) for d in external}
    synthetic_reports = reports[:len(synthetic)]
    # Length buckets over every synthetic set together (weighted by lines, as before).
    buckets: dict[str, dict[str, float]] = {}
    for name in ("1-5", "6-20", "21+"):
        parts = [r.by_length[name] for r in synthetic_reports if name in r.by_length]
        n_lines = sum(p["n"] for p in parts)
        cer = float(np.average([p["cer"] for p in parts], weights=[p["n"] for p in parts])) if parts else float("nan")
        buckets[name] = {"n": n_lines, "cer": cer}
    overall = float(np.average([r.cer for r in synthetic_reports], weights=[r.n for r in synthetic_reports]))
    b1_ms = batch1_ms(engine)
    by_name = {r.name: r for r in reports}
    checks = {
        "public_cer": by_name["public"].cer <= TARGETS["public_cer"],
        "heldout_font_cer": by_name["public-heldout-font"].cer <= TARGETS["heldout_font_cer"],
        "bucket_vs_overall": all(b["cer"] <= TARGETS["bucket_vs_overall"] * overall
                                 for b in buckets.values() if b["n"]),
        "ort_b1_ms": b1_ms <= TARGETS["ort_b1_ms"],
        "domain_test_splits_cer": all(by_name[p].cer <= TARGETS["domain_cer"] for p in TEST_SEEDS),
        "browser_lines_cer": "browser-lines" in by_name and by_name["browser-lines"].cer <= TARGETS["external_cer"],
    }
    for d in external:
        checks[f"{d.name}_cer"] = by_name[d.name].cer <= TARGETS["external_cer"]
        if d.name in peer:
            checks[f"{d.name}_within_2x_peer"] = shared[d.name].cer <= TARGETS["vs_peer"] * peer[d.name].cer
    return {"sets": [r.to_dict() for r in reports], "side_by_side": {k: asdict(v) for k, v in shared.items()},
            "length_buckets": buckets, "synthetic_overall_cer": overall, "ort_b1_ms_32x320": b1_ms, "checks": checks,
            "_reports": reports}


def print_results(models: dict[str, dict[str, Any]], peer: dict[str, SideBySide], peer_info: dict[str, str] | str,
                  external: list[LineDataset]) -> None:
    labels = list(models)
    first: list[EvalReport] = models[labels[0]]["_reports"]
    headers = ["evaluation set", "lines"] + [h for m in labels for h in (f"CER {m}", f"line acc {m}")]
    rows = []
    for i, report in enumerate(first):
        rows.append([report.name, report.n] + [c for m in labels for c in
                                               (f"{models[m]['_reports'][i].cer:.4f}",
                                                f"{models[m]['_reports'][i].line_accuracy:.3f}")])
    for bucket in ("1-5", "6-20", "21+"):
        rows.append([f"length {bucket}", models[labels[0]]["length_buckets"][bucket]["n"]]
                    + [c for m in labels for c in (f"{models[m]['length_buckets'][bucket]['cer']:.4f}", "")])
    print_table(headers, rows)
    print("\nexternal sets side by side (NFKC, ends stripped; CER / CER without spaces / ms per line):")
    peer_name = "rapidocr" if isinstance(peer_info, dict) else None
    headers = ["external set", "lines"] + [f"fedocr {m}" for m in labels] + ([peer_name] if peer_name else [])
    rows = []
    for d in external:
        cells = [models[m]["side_by_side"][d.name] for m in labels] + ([asdict(peer[d.name])] if peer_name else [])
        rows.append([d.name, len(d)] + [f"{c['cer']:.4f} / {c['cer_no_spaces']:.4f} / {c['ms_per_line']:.1f}"
                                         for c in cells])
    print_table(headers, rows)
    group_rows = []
    for d in external:
        ours = models[labels[0]]["side_by_side"][d.name]
        cells = [models[m]["side_by_side"][d.name]["by_group"] for m in labels]
        cells += [peer[d.name].by_group] if peer_name else []
        group_rows += [[d.name, g, ours["group_lines"][g]] + [f"{c[g]:.4f}" for c in cells] for g in cells[0]]
    if group_rows:
        print("\nby kind of text and setting (NFKC CER):")
        print_table(["external set", "group", "lines"] + headers[2:], group_rows)
    print(f"\ncommonest edits of {labels[-1]} (reference → reading):")
    for d in external:
        edits = models[labels[-1]]["side_by_side"][d.name]["top_edits"]
        print(f"  {d.name}: " + ", ".join(f"{edit} {n}" for edit, n in edits))
    if isinstance(peer_info, str):
        print(f"peer skipped: {peer_info}")
    else:
        print(f"peer: rapidocr {peer_info['version']}, {peer_info['recogniser']}, {peer_info['mode']}")
    for m in labels:
        info = models[m]
        print(f"\n{m}: synthetic overall CER {info['synthetic_overall_cer']:.4f}; batch-1 latency on a 32x320 line "
              f"{info['ort_b1_ms_32x320']:.2f} ms (median of 200)")
        print("  checks: " + ", ".join(f"{k} {'met' if ok else 'NOT met'}" for k, ok in info["checks"].items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=str(ROOT / "models" / "base.onnx"),
                        help="comma-separated model files, optionally label=path (e.g. before=...,after=...)")
    parser.add_argument("--n", type=int, default=300, help="lines per synthetic set")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-peer", action="store_true", help="skip the peer even when it is installed")
    parser.add_argument("--single-pass", choices=("no", "also", "only"), default="no",
                        help="also (or only) score each model reading every line once, without the service's "
                             "second reading of lines set off density (label `NAME once`)")
    args = parser.parse_args()
    specs = parse_models(args.models)
    synthetic, external = synthetic_sets(args.n), external_sets()

    peer_info: dict[str, str] | str = "--no-peer given"
    peer: dict[str, SideBySide] = {}
    if not args.no_peer:
        found = rapidocr_reader(args.threads)
        if isinstance(found, str):
            peer_info = found
            print(f"peer skipped: {found}")
        else:
            read, peer_info = found
            peer = {d.name: side_by_side(read, d, line_groups(d)) for d in external}

    models: dict[str, dict[str, Any]] = {}
    readings = {"no": (True,), "also": (False, True), "only": (False,)}[args.single_pass]
    runs = [(label if reread else f"{label} once", path, reread) for label, path in specs for reread in readings]
    for label, path, reread in runs:
        engine = load_engine(path, threads=args.threads)
        engine.reread = reread
        print(f"model {label}: {path} ({engine.info.backend}, {engine.info.quantization}); threads {args.threads}")
        models[label] = {"path": str(path), "model_info": engine.info.provenance, "reread": reread,
                         **score_model(engine, synthetic, external, peer)}
    print_results(models, peer, peer_info, external)
    last = models[runs[-1][0]]
    path = write_result("base_model", {
        "command": "python bench/base_model.py " + " ".join(sys.argv[1:]), "n_synthetic": args.n,
        "threads": args.threads, "external_sets": [d.name for d in external],
        "models": {k: {f: v for f, v in m.items() if not f.startswith("_")} for k, m in models.items()},
        "peer": ({"skipped": peer_info} if isinstance(peer_info, str)
                 else {**peer_info, "side_by_side": {k: asdict(v) for k, v in peer.items()}}),
        "targets": TARGETS, "checks": last["checks"]})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
