"""Reading a step's settings from Flower's run config (flat, hyphenated keys; a step's own
section uses dotted keys such as `compress.top-k`). One coercion rule for every key, so a value
from `pyproject.toml`, `flwr run --run-config` or `fedocr fl simulate --set` means the same."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

T = TypeVar("T")
C = TypeVar("C", bound="StepConfig")


class StepConfigError(ValueError):
    """A run-config value a step cannot use; the message names the key."""


def bad(key: str, why: str) -> StepConfigError:
    return StepConfigError(f"run config {key}: {why}")


def coerce(value: Any, default: Any) -> Any:
    """`value` as the type of `default`. An int takes only whole numbers (2.7 is refused, never
    truncated); a bool takes true/false (also as the strings a command line passes)."""
    if isinstance(default, bool):
        if isinstance(value, str):
            lowered = value.strip().lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError("not true or false")
            return lowered in ("true", "1", "yes")
        if not isinstance(value, (bool, int)):
            raise TypeError("not a boolean")
        return bool(value)
    if isinstance(default, int):
        if isinstance(value, bool):
            raise TypeError("a boolean is not a number")
        if isinstance(value, float):
            if not value.is_integer():
                raise ValueError("not a whole number")
            return int(value)
        return int(value)  # int("2.7") raises
    return type(default)(value)


def read(run_config: Mapping[str, Any], key: str, default: T) -> T:
    """The run config's `key` as the type of `default`, or `default` when absent."""
    if key not in run_config:
        return default
    try:
        return coerce(run_config[key], default)  # type: ignore[no-any-return]
    except (TypeError, ValueError):
        raise bad(key, f"expected {type(default).__name__}, got {run_config[key]!r}") from None


class StepConfig:
    """Mixin for a step's frozen config dataclass: `KEYS` maps each run-config key it reads to
    its field, so reading, defaults and the list of known keys come from one table."""
    KEYS: ClassVar[dict[str, str]] = {}

    @classmethod
    def from_run_config(cls: type[C], rc: Mapping[str, Any]) -> C:
        return cls(**{field: read(rc, key, getattr(cls, field)) for key, field in cls.KEYS.items()})

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """The run-config keys this config reads, with their defaults."""
        return {key: getattr(cls, field) for key, field in cls.KEYS.items()}
