"""Pydantic models of every API answer, so /docs (and the fuzzer reading it) tell the truth."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from fedocr.serve.engine import LineResult, ModelInfo, PageResult


class Char(BaseModel):
    char: str
    confidence: float = Field(ge=0, le=1, description="peak probability of the character's CTC spike")
    x: list[int] = Field(min_length=2, max_length=2, description="x0, x1 of the character in image pixels (x1 exclusive)")


class Line(BaseModel):
    text: str
    confidence: float = Field(ge=0, le=1)
    box: list[int] = Field(min_length=4, max_length=4, description="x0, y0, x1, y1 in image pixels (x1, y1 exclusive)")
    chars: list[Char] = Field(default_factory=list, description="each character with its confidence and x-range")

    @classmethod
    def from_result(cls, line: LineResult) -> "Line":
        return cls(text=line.text, confidence=line.confidence, box=list(line.box),
                   chars=[Char(char=c.char, confidence=c.confidence, x=[c.x0, c.x1]) for c in line.chars])


class OcrResult(BaseModel):
    text: str = Field(description="all lines joined in reading order (rows by newline)")
    confidence: float = Field(ge=0, le=1, description="mean line confidence")
    lines: list[Line]
    width: int = Field(description="of the image as read: turned by `angle`, boxes refer to it")
    height: int
    angle: int = Field(0, description="degrees the image was turned counter-clockwise to read it upright "
                                      "(0, 90, 180, 270): a page scanned sideways or upside down")
    warning: str | None = Field(None, description="set when most of the image read with low confidence")
    time_ms: float = Field(description="server time for this image (decode + recognise)")
    model: str = Field(description="version (content hash) of the model that answered")
    cached: bool = Field(description="answered from the result cache")

    @classmethod
    def from_page(cls, page: PageResult, time_ms: float, model: str, cached: bool) -> "OcrResult":
        return cls(text=page.text, confidence=page.confidence, width=page.width, height=page.height,
                   angle=page.angle, warning=page.warning,
                   lines=[Line.from_result(line) for line in page.lines],
                   time_ms=round(time_ms, 2), model=model, cached=cached)


class BatchItem(BaseModel):
    index: int
    result: OcrResult | None = None
    error: str | None = Field(default=None, description="why this image was not recognised")
    status: int = Field(description="HTTP-style status of this item: 200, or 4xx")


class BatchResult(BaseModel):
    results: list[BatchItem]
    time_ms: float


class Health(BaseModel):
    status: Literal["ok"]
    model: str | None = Field(description="version of the served model; null on a dashboard-only server")
    backend: str | None
    charset_version: str | None = Field(None, description="the served model's vocabulary")
    builtin_line_cer: float | None = Field(None, description="CER of the served model on the built-in line it read "
                                                             "before going live (recognition works end to end)")
    pid: int = Field(description="the server process that answered (`fedocr serve --processes N` runs N)")
    uptime_s: float


class ModelDescription(BaseModel):
    version: str
    file: str
    backend: str
    quantization: str
    charset_size: int
    charset_version: str
    run: Any = Field(default=None, description="federated run that produced the model, if any")
    round: Any = Field(default=None, description="federated round that produced the model, if any")
    loaded_at: str
    config: dict[str, Any]
    provenance: dict[str, Any]

    @classmethod
    def from_info(cls, info: ModelInfo, loaded_at: str) -> "ModelDescription":
        from pathlib import Path

        return cls(version=info.version, file=Path(info.path).name, backend=info.backend,
                   quantization=info.quantization, charset_size=info.charset_size,
                   charset_version=info.charset_version, run=info.run, round=info.round, loaded_at=loaded_at,
                   config=info.config, provenance=info.provenance)


class Reloaded(BaseModel):
    changed: bool
    model: ModelDescription


class Error(BaseModel):
    detail: str


class Unprocessable(BaseModel):
    """422: FastAPI's list of field errors, or one sentence (more text lines than the limit)."""
    detail: str | list[dict[str, Any]]
