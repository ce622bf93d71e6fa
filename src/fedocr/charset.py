"""The vocabulary: characters <-> class indices for CTC (index 0 is the blank).

The default vocabulary covers what Chinese + English business documents use: all 6,763
GB2312 hanzi (levels 1 and 2, derived from Python's codec rather than pasted tables),
printable ASCII with the space, and the full-width punctuation and document symbols that
Chinese documents mix with it. Full-width forms of punctuation are kept as their own
classes because users expect `，` back when a contract says `，`; every other character is
looked up as written and then under NFKC (full-width letters and digits, compatibility
ideographs), so visually equivalent input maps to one class. Anything still unknown is
counted, never raised on.
"""
from __future__ import annotations

import hashlib
import string
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from functools import cache

BLANK = 0

# Full-width punctuation and document symbols seen in Chinese invoices, contracts and forms.
DOCUMENT_SYMBOLS = (
    "，。、；：？！“”‘’（）《》〈〉【】「」『』〔〕…—～·￥¥％＃＆＊＋－／＝＠"
    "℃°№×÷±√∶①②③④⑤⑥⑦⑧⑨⑩ⅠⅡⅢⅣⅤⅥⅦⅧⅨⅩ々〇□■○●△▲◆★☆※→←↑↓€£§"
)


def gb2312_hanzi() -> list[str]:
    """All GB2312 level-1 and level-2 hanzi (rows 16-87), in code order: 6,763 characters."""
    chars = []
    for row in range(0xB0, 0xF8):
        for col in range(0xA1, 0xFF):
            try:
                chars.append(bytes([row, col]).decode("gb2312"))
            except UnicodeDecodeError:  # the five unused cells at the end of row 55
                continue
    return chars


def _default_chars() -> list[str]:
    ascii_chars = [" "] + [c for c in string.printable if c.isprintable() and c != " "]
    seen: dict[str, None] = {}
    for c in ascii_chars + list(DOCUMENT_SYMBOLS) + gb2312_hanzi():
        seen.setdefault(c, None)
    return list(seen)


@dataclass(frozen=True)
class EncodedText:
    """A label as class indices, plus the characters that had no class."""

    ids: list[int]
    unknown: list[str] = field(default_factory=list)


class Charset:
    """An ordered vocabulary; class i + 1 is `chars[i]`, class 0 is the CTC blank."""

    def __init__(self, chars: list[str] | tuple[str, ...]) -> None:
        if len(set(chars)) != len(chars):
            raise ValueError("charset has duplicate characters")
        if any(len(c) != 1 for c in chars):
            raise ValueError("charset entries must be single characters")
        self.chars: tuple[str, ...] = tuple(chars)
        self._index = {c: i + 1 for i, c in enumerate(self.chars)}
        self.version = hashlib.sha256("\n".join(self.chars).encode("utf-8")).hexdigest()[:16]

    def __len__(self) -> int:
        """Number of classes, blank included (the model's output size)."""
        return len(self.chars) + 1

    def __contains__(self, char: str) -> bool:
        return self.lookup(char) is not None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Charset) and other.chars == self.chars

    def __hash__(self) -> int:
        return hash(self.version)

    def lookup(self, char: str) -> int | None:
        """Class of one character, as written or else under NFKC; None when unknown."""
        found = self._index.get(char)
        if found is None:
            normalised = unicodedata.normalize("NFKC", char)
            if len(normalised) == 1:
                found = self._index.get(normalised)
        return found

    def encode(self, text: str) -> EncodedText:
        ids, unknown = [], []
        for char in text:
            idx = self.lookup(char)
            if idx is None:
                unknown.append(char)
            else:
                ids.append(idx)
        return EncodedText(ids, unknown)

    def normalise(self, text: str, keep_unknown: bool = False) -> str:
        """Each known character as its class's form (what the model can produce); unknown
        characters are dropped, or kept as written with keep_unknown=True (for scoring)."""
        out = []
        for char in text:
            idx = self.lookup(char)
            if idx is not None:
                out.append(self.chars[idx - 1])
            elif keep_unknown:
                out.append(char)
        return "".join(out)

    def decode(self, ids: list[int]) -> str:
        """Class indices (no blanks, already collapsed) back to text."""
        return "".join(self.chars[i - 1] for i in ids if i != BLANK)

    def to_dict(self) -> dict[str, object]:
        return {"chars": "".join(self.chars), "version": self.version}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> "Charset":
        charset = cls(list(str(data["chars"])))
        expected = data.get("version")
        if expected is not None and expected != charset.version:
            raise ValueError(f"charset version mismatch: stored {expected}, computed {charset.version}")
        return charset


@cache
def default_charset() -> Charset:
    """The shipped document vocabulary (GB2312 hanzi + ASCII + document symbols)."""
    return Charset(_default_chars())


class UnknownCounter:
    """Counts characters outside the vocabulary, so a data set's coverage can be reported."""

    def __init__(self) -> None:
        self.chars: Counter[str] = Counter()
        self.lines = 0

    def add(self, encoded: EncodedText) -> None:
        if encoded.unknown:
            self.lines += 1
            self.chars.update(encoded.unknown)

    def summary(self, top: int = 10) -> str:
        if not self.lines:
            return "all characters in vocabulary"
        common = "".join(c for c, _ in self.chars.most_common(top))
        return f"{self.lines} line(s) with {sum(self.chars.values())} unknown character(s), most common: {common}"
