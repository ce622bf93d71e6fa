"""Line datasets: labelled images on disk (three formats) and rendered synthetic lines.

Formats read:
- a folder with `labels.tsv` (`images/000001.png<TAB>text` per line), as `fedocr synth` writes;
- a PaddleOCR-style label file (`path<TAB>text`, paths relative to the file's folder);
- an LMDB database in the layout of the original CRNN code (`num-samples`, `image-%09d`,
  `label-%09d`, 1-based).
Every dataset yields `(uint8 gray image, text)`; bad files raise `DatasetError` with the file
and line that is wrong.
"""
from __future__ import annotations

import bisect
import random
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np

from fedocr.charset import Charset, default_charset
from fedocr.data.devices import DEVICES, Device
from fedocr.data.fonts import FontFace, coverage, installed_faces, latin_faces
from fedocr.data.preprocess import to_gray
from fedocr.data.presets import Preset, get_preset
from fedocr.data.render import degrade, render_line

LABELS_FILE = "labels.tsv"


class DatasetError(ValueError):
    """A data set that cannot be read: missing, empty, malformed or pointing at non-images."""


def decode_image(data: bytes, name: str = "image") -> np.ndarray:
    """Encoded image bytes -> uint8 gray array; DatasetError when they are not an image."""
    buf = np.frombuffer(data, dtype=np.uint8)
    # IMREAD_UNCHANGED keeps alpha, so text on a transparent background is composited on white
    # (IMREAD_GRAYSCALE would drop alpha and leave black ink on black).
    image = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if buf.size else None
    if image is None or image.size == 0:
        raise DatasetError(f"{name}: not a readable image")
    if image.ndim == 3:
        image = image[..., [2, 1, 0, 3][: image.shape[2]]] if image.shape[2] in (3, 4) else image  # BGR(A) -> RGB(A)
    return to_gray(image)


def read_image(path: str | Path) -> np.ndarray:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    return decode_image(data, str(path))


class LineDataset(Sequence[tuple[np.ndarray, str]]):
    """Base: a sized, indexable collection of (image, text) with a name for reports."""

    name: str = "lines"
    # How the images are made, where code makes them (synthetic lines): part of a training run's
    # data fingerprint, so a run does not resume on images its renderer no longer draws.
    render_version: str = ""

    def texts(self) -> Iterator[str]:
        return (self[i][1] for i in range(len(self)))


class LabelFileDataset(LineDataset):
    """`path<TAB>text` lines (labels.tsv or PaddleOCR-style); image paths relative to `root`."""

    def __init__(self, label_file: str | Path, root: str | Path | None = None) -> None:
        self.label_file = Path(label_file)
        self.root = Path(root) if root is not None else self.label_file.parent
        self.name = self.root.name or str(self.root)
        if not self.label_file.is_file():
            raise DatasetError(f"{self.label_file}: no such labels file")
        try:
            # split on "\n" only: str.splitlines() would also cut labels at U+2028, \x1c and the like
            lines = [row.rstrip("\r") for row in self.label_file.read_text(encoding="utf-8-sig").split("\n")]
        except UnicodeDecodeError as exc:
            raise DatasetError(f"{self.label_file}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
        self.items: list[tuple[Path, str]] = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            path, sep, label = line.partition("\t")
            if not sep or not path.strip():
                raise DatasetError(f"{self.label_file}:{number}: expected 'image-path<TAB>text', got {line[:60]!r}")
            self.items.append((self.root / path.strip(), label))
        if not self.items:
            raise DatasetError(f"{self.label_file}: no labelled lines")
        missing = [p for p, _ in self.items if not p.is_file()]
        if missing:
            raise DatasetError(f"{self.label_file}: {len(missing)} image(s) missing, first {missing[0]}")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[np.ndarray, str]:  # type: ignore[override]
        path, label = self.items[index]
        return read_image(path), label

    def texts(self) -> Iterator[str]:
        return (label for _, label in self.items)


class LmdbDataset(LineDataset):
    """CRNN-style LMDB: `num-samples`, `image-%09d` (encoded image), `label-%09d` (UTF-8), 1-based."""

    def __init__(self, path: str | Path) -> None:
        import lmdb

        self.path = Path(path)
        self.name = self.path.name
        try:
            self.env = lmdb.open(str(self.path), readonly=True, lock=False, readahead=False, meminit=False)
        except lmdb.Error as exc:
            raise DatasetError(f"{self.path}: not an LMDB database ({exc})") from exc
        with self.env.begin() as txn:
            raw = txn.get(b"num-samples")
        if raw is None or not raw.strip().isdigit():
            raise DatasetError(f"{self.path}: LMDB without a valid 'num-samples' key")
        self.count = int(raw)
        if self.count == 0:
            raise DatasetError(f"{self.path}: LMDB holds no samples")

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[np.ndarray, str]:  # type: ignore[override]
        if not 0 <= index < self.count:
            raise IndexError(index)
        key = index + 1
        with self.env.begin() as txn:
            image, label = txn.get(b"image-%09d" % key), txn.get(b"label-%09d" % key)
        if image is None or label is None:
            raise DatasetError(f"{self.path}: sample {key} missing")
        try:
            text = label.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DatasetError(f"{self.path}: label {key} is not UTF-8") from exc
        return decode_image(image, f"{self.path}[{key}]"), text

    def __getstate__(self) -> dict[str, object]:  # LMDB handles do not cross process boundaries
        return {"path": self.path}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__init__(state["path"])  # type: ignore[misc]


class InMemoryLines(LineDataset):
    """Another data set's lines decoded or rendered once and kept in memory (for many epochs of
    a small set, e.g. a federated client's local data)."""

    def __init__(self, source: LineDataset) -> None:
        self.name, self.render_version = source.name, source.render_version
        self.items = [source[i] for i in range(len(source))]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[np.ndarray, str]:  # type: ignore[override]
        return self.items[index]

    def texts(self) -> Iterator[str]:
        return (text for _, text in self.items)


class SubsetLines(LineDataset):
    """The lines of another data set at the given indices, in that order (a held-out split)."""

    def __init__(self, source: LineDataset, indices: Sequence[int], name: str) -> None:
        self.source, self.indices = source, list(indices)
        self.name, self.render_version = name, source.render_version

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[np.ndarray, str]:  # type: ignore[override]
        return self.source[self.indices[index]]


class ConcatLines(LineDataset):
    """Several line sets read as one, in order (lazily: nothing is decoded twice)."""

    def __init__(self, parts: Sequence[LineDataset], name: str | None = None) -> None:
        self.parts = list(parts)
        self.name = name or "+".join(p.name for p in self.parts)
        self.render_version = "+".join(p.render_version for p in self.parts if p.render_version)
        self.offsets = [0]
        for part in self.parts:
            self.offsets.append(self.offsets[-1] + len(part))

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getitem__(self, index: int) -> tuple[np.ndarray, str]:  # type: ignore[override]
        if not 0 <= index < len(self):
            raise IndexError(index)
        part = bisect.bisect_right(self.offsets, index) - 1
        return self.parts[part][index - self.offsets[part]]

    def texts(self) -> Iterator[str]:
        for part in self.parts:
            yield from part.texts()


def open_dataset(path: str | Path) -> LineDataset:
    """A folder with labels.tsv, an LMDB folder, or a PaddleOCR-style label file."""
    path = Path(path)
    if path.is_dir():
        if (path / LABELS_FILE).is_file():
            return LabelFileDataset(path / LABELS_FILE, path)
        if (path / "data.mdb").is_file():
            return LmdbDataset(path)
        raise DatasetError(f"{path}: folder has neither {LABELS_FILE} nor an LMDB data.mdb")
    if path.is_file():
        return LabelFileDataset(path)
    raise DatasetError(f"{path}: no such data set")


class SyntheticLines(LineDataset):
    """`n` rendered lines of a preset; line i is a pure function of (seed, i).

    `held_out_fonts=True` renders with the families kept out of training only.
    """

    render_version = "3"  # 2: Western faces for ASCII runs; 3: ink cuts and markup in pretrain and wide

    def __init__(self, preset: str | Preset, n: int, seed: int = 0, charset: Charset | None = None,
                 held_out_fonts: bool = False) -> None:
        self.preset = get_preset(preset) if isinstance(preset, str) else preset
        self.n, self.seed = n, seed
        self.charset = charset or default_charset()
        self.name = self.preset.name + ("-heldout-font" if held_out_fonts else "")
        wide = self.preset.faces == "wide"
        faces = installed_faces(held_out=held_out_fonts, wide=wide)
        by_style = {s: [f for f in faces if f.style == s] for s in {f.style for f in faces}}
        weighted = [(by_style[s], w) for s, w in self.preset.styles.items() if by_style.get(s)]
        if held_out_fonts or not weighted:
            weighted = [(list(faces), 1.0)]
        self._style_faces = [f for f, _ in weighted]
        self._style_weights = np.array([w for _, w in weighted]) / sum(w for _, w in weighted)
        self._coverage = {f: coverage(f, self.charset) for f in faces}
        self._latin = latin_faces(held_out=held_out_fonts, wide=wide)
        cond = self.preset.conditions
        if cond.device:  # lines through a device are drawn differently from the same texts without it
            self.render_version = f"{type(self).render_version}+{cond.device}@{cond.device_rate:g}"

    def __len__(self) -> int:
        return self.n

    def text(self, index: int) -> str:
        text = self.preset.text(random.Random(f"{self.seed}:{index}")).strip()
        return self.charset.normalise(text).strip() or "0"

    def texts(self) -> Iterator[str]:
        return (self.text(i) for i in range(self.n))

    def _pick_face(self, text: str, rng: np.random.Generator) -> tuple[FontFace, str]:
        group = self._style_faces[int(rng.choice(len(self._style_faces), p=self._style_weights))]
        face = group[int(rng.integers(len(group)))]
        needed = set(text)
        if needed <= self._coverage[face]:
            return face, text
        able = [f for f in self._coverage if needed <= self._coverage[f]]
        if able:
            return able[int(rng.integers(len(able)))], text
        return face, "".join(c for c in text if c in self._coverage[face]) or "0"

    def _device(self, index: int) -> Device | None:
        """The organisation device line `index` went through, drawn on its own random stream."""
        cond = self.preset.conditions
        if not cond.device or np.random.default_rng([self.seed, index, 9]).random() >= cond.device_rate:
            return None
        return DEVICES[cond.device]

    def __getitem__(self, index: int) -> tuple[np.ndarray, str]:  # type: ignore[override]
        if not 0 <= index < self.n:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, index, 7])
        face, text = self._pick_face(self.text(index), rng)
        cond = self.preset.conditions
        # Its own stream: a line drawn without a Western face looks as it did before they existed.
        pick = np.random.default_rng([self.seed, index, 8])
        latin = (self._latin[int(pick.integers(len(self._latin)))]
                 if self._latin and pick.random() < cond.latin_font else None)
        device = self._device(index)
        device_rng = np.random.default_rng([self.seed, index, 10])
        image = render_line(text, face, rng, cond, latin)
        if device and device.stage == "print":
            image = device.apply(image, device_rng)
        image = degrade(image, rng, cond)
        if device and device.stage == "scan":
            image = device.apply(image, device_rng)
        return image, text
