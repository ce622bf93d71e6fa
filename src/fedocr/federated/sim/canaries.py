"""The canaries of a simulated run: which secrets one organisation's training lines carry, and
the run-config keys that switch them and the privacy audit on (`canary.*`, `audit.*`).

Secrets are drawn from the run seed, so every Ray actor plants the same ones and the audit can
find them; they are also written to OUT/canaries.json, never to the report. With the seed,
anyone can redraw them: they are an instrument to measure memorisation (Carlini et al. 2019,
"The Secret Sharer"), not secrets kept from the operator. Each planted secret has a control of
the same format that is never planted: its exposure is what chance looks like in this run.
"""
from __future__ import annotations

import functools
import json
import random
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from fedocr.charset import Charset
from fedocr.data import LineDataset
from fedocr.data.canaries import SecretFormat, canary_lines, draw_secrets, prefix_for, with_lines
from fedocr.data.organisations import get_federation
from fedocr.federated.pipeline.settings import StepConfig, bad, read
from fedocr.model.checkpoint import atomic_write

if TYPE_CHECKING:
    from fedocr.federated.config import FlConfig

SECRETS_FILE = "canaries.json"
SECTIONS = ("canary.", "audit.")


@dataclass(frozen=True)
class AuditConfig(StepConfig):
    canary_org: str = ""        # node (organisation or branch) whose training lines get canaries ("": none)
    canary_count: int = 4       # secrets planted there (and as many never-planted controls)
    canary_repeats: int = 10    # renderings of each secret among its training lines (Carlini's k)
    canary_digits: int = 8      # digits after the organisation's prefix (账号 + 8 digits)
    enabled: bool = False       # `fedocr fl simulate` audits the run at its end (also on with canaries)
    candidates: int = 500       # |R|: random secrets of the same format each one is ranked among
    renderings: int = 2         # fresh renderings each text's loss is averaged over
    hidden_digits: int = 0      # occluded variant: trailing digits painted over (0: off; it shows nothing on our models)
    lines: int = 200            # membership inference: at most this many lines per organisation and side
    KEYS: ClassVar[dict[str, str]] = {
        "canary.org": "canary_org", "canary.count": "canary_count", "canary.repeats": "canary_repeats",
        "canary.digits": "canary_digits", "audit.enabled": "enabled", "audit.candidates": "candidates",
        "audit.renderings": "renderings", "audit.hidden-digits": "hidden_digits", "audit.lines": "lines"}

    def __post_init__(self) -> None:
        for key, low in (("canary.count", 1), ("canary.repeats", 1), ("canary.digits", 1), ("audit.candidates", 1),
                         ("audit.renderings", 1), ("audit.lines", 2), ("audit.hidden-digits", 0)):
            if getattr(self, self.KEYS[key]) < low:
                raise bad(key, f"must be at least {low}")
        if self.canary_digits > 18:
            raise bad("canary.digits", "at most 18")
        if self.hidden_digits >= self.canary_digits:
            raise bad("audit.hidden-digits", f"must be below canary.digits ({self.canary_digits}): some digits stay visible")
        if 2 * self.canary_count > 10 ** self.canary_digits // 2:
            raise bad("canary.count", f"too many secrets for {self.canary_digits} digits")

    @staticmethod
    def owns(key: str) -> bool:
        return key.startswith(SECTIONS)

    @classmethod
    def from_keys(cls, rc: Mapping[str, Any]) -> "AuditConfig":
        """From the run config's `canary.*` / `audit.*` keys; an unknown one is refused by name."""
        for key in rc:
            if cls.owns(key) and key not in cls.KEYS:
                raise bad(key, f"unknown key (audit keys: {', '.join(cls.KEYS)})")
        return cls(**{field: read(rc, key, getattr(cls, field)) for key, field in cls.KEYS.items()})

    def to_run_config(self) -> dict[str, Any]:
        return {key: getattr(self, field) for key, field in self.KEYS.items()}

    def check_federation(self, federation: str) -> None:
        names = get_federation(federation).names
        if self.canary_org and self.canary_org not in names:
            raise bad("canary.org", f"{self.canary_org!r} is not a node of {federation} ({', '.join(names)})")

    @property
    def wanted(self) -> bool:
        """Whether a simulation ends with the audit."""
        return self.enabled or bool(self.canary_org)


@dataclass(frozen=True)
class Secrets:
    """The canaries of one run: planted in node `org`'s training lines `repeats` times each, and controls."""
    org: str
    prefix: str
    digits: int
    repeats: int
    planted: tuple[str, ...]
    controls: tuple[str, ...]
    render_seed: int           # renderings of planted secret i use seeds render_seed + 7919 i

    @property
    def format(self) -> SecretFormat:
        return SecretFormat(self.prefix, self.digits)


def run_secrets(cfg: "FlConfig") -> Secrets | None:
    """The run's canaries, drawn from its seed; None without `canary.org`."""
    audit = cfg.audit
    if not audit.canary_org:
        return None
    fed = get_federation(cfg.federation)
    fmt = SecretFormat(prefix_for(fed.node(audit.canary_org).org, fed.mini), audit.canary_digits)
    rng = random.Random(f"canaries/{cfg.seed}/{cfg.federation}/{audit.canary_org}")
    planted = draw_secrets(fmt, audit.canary_count, rng)
    controls = draw_secrets(fmt, audit.canary_count, rng, exclude=planted)
    return Secrets(audit.canary_org, fmt.prefix, fmt.digits, audit.canary_repeats, tuple(planted), tuple(controls),
                   render_seed=rng.randrange(1 << 30))


@functools.lru_cache(maxsize=4)
def planted_lines(federation: str, secrets: Secrets, charset: Charset) -> LineDataset:
    """The lines the canary node trains on besides its own: each planted secret's renderings."""
    fed = get_federation(federation)
    preset = fed.preset(fed.node(secrets.org).org)
    return canary_lines(preset, secrets.planted, secrets.repeats, secrets.render_seed, charset)


def plant(cfg: "FlConfig", org: str, data: LineDataset, charset: Charset) -> LineDataset:
    """`org`'s training lines, with the run's canaries added when it is the canary organisation."""
    secrets = run_secrets(cfg)
    if secrets is None or org != secrets.org:
        return data
    return with_lines(data, planted_lines(cfg.federation, secrets, charset))


def write_secrets(out: Path, secrets: Secrets) -> Path:
    path = out / SECRETS_FILE
    text = json.dumps(asdict(secrets), ensure_ascii=False, indent=1)
    atomic_write(path, lambda tmp: tmp.write_text(text + "\n", encoding="utf-8"))
    return path


def read_secrets(out: Path) -> Secrets | None:
    path = out / SECRETS_FILE
    if not path.is_file():
        return None
    d = json.loads(path.read_text(encoding="utf-8"))
    return Secrets(**{**d, "planted": tuple(d["planted"]), "controls": tuple(d["controls"])})
