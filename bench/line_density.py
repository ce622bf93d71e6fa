"""How wide a character is in the image the model reads: pixels per half-width character (a hanzi
counts two) after preprocessing to 32 px high, on the external check sets and on lines of our
own presets. A set denser than most training lines may read worse (the CTC head has width / 4
steps, so a narrow run of letters has little room); the `condense` condition draws denser lines.

    .venv/bin/python bench/line_density.py [--n 300] [--presets pretrain,wide,ui]

Prints the 10th percentile, median and 90th percentile per set and writes
bench/results/line_density.json.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import external_set_dirs, print_table, write_result  # noqa: E402

from fedocr.data import LineDataset, SyntheticLines, open_dataset  # noqa: E402
from fedocr.data.preprocess import preprocess  # noqa: E402
from fedocr.model.infer import half_widths  # noqa: E402

SEED = 5  # of the synthetic lines; the external sets are read whole


def pixels_per_character(dataset: LineDataset) -> np.ndarray:
    widths = []
    for i in range(len(dataset)):
        image, text = dataset[i]
        widths.append(preprocess(image).shape[-1] / max(half_widths(text), 1))
    return np.array(widths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="lines per synthetic set")
    parser.add_argument("--presets", default="pretrain,wide,ui")
    args = parser.parse_args()
    sets: dict[str, LineDataset] = {folder.name: open_dataset(folder) for folder in external_set_dirs()}
    for preset in args.presets.split(","):
        sets[f"synth:{preset}"] = SyntheticLines(preset, args.n, seed=SEED)
    rows, results = [], {}
    for name, dataset in sets.items():
        widths = pixels_per_character(dataset)
        p10, median, p90 = (float(np.percentile(widths, q)) for q in (10, 50, 90))
        results[name] = {"lines": len(widths), "p10": p10, "median": median, "p90": p90}
        rows.append([name, len(widths), p10, median, p90])
    print_table(["set", "lines", "p10 px/char", "median", "p90"], rows)
    path = write_result("line_density", {"command": " ".join(["bench/line_density.py", *sys.argv[1:]]),
                                         "unit": "px per half-width character at 32 px height", "synthetic_seed": SEED,
                                         "sets": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
