"""The federated run's settings: one typed, validated dataclass built once from Flower's run config.

Flower hands the ServerApp and every ClientApp `context.run_config`, a flat dict whose keys are
the hyphenated names declared in `[tool.flwr.app.config]` of pyproject.toml. `FlConfig.from_run_config`
is the only place those strings are read, so a typo or a bad value fails at the edge with the
key's name, not deep inside a round. The defaults here equal the pyproject defaults (a test
checks that), so the Python API and `flwr run .` behave alike.
"""
from __future__ import annotations

import math
import os
import zlib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from fedocr.federated.pipeline.aggregate import ApplyConfig, MomentumConfig
from fedocr.federated.pipeline.attacks import AttackConfig
from fedocr.federated.pipeline.build import section_defaults, validate_run_config
from fedocr.federated.pipeline.checks import CheckConfig
from fedocr.federated.pipeline.drills import DrillConfig
from fedocr.federated.pipeline.settings import StepConfigError, coerce
from fedocr.federated.pipeline.transforms import AggregateConfig
from fedocr.federated.sim.canaries import AuditConfig
from fedocr.model.shipped import base_checkpoint
from fedocr.train import TrainConfig

# Where a relative out-dir or store path is resolved: the ServerApp's working directory is the
# SuperLink's, which says nothing to the operator, so relative paths go under one known root.
RUNS_ROOT_ENV = "FEDOCR_RUNS"
SCRATCH_LR, FINETUNE_LR = 3e-3, 1e-4  # AdamW rates for local training from scratch / from a trained model
# SGD's (momentum 0.9), from dense FedAvg in bench/fl_compress.py (AdamW's 1e-4 barely moves SGD):
# the best of 0.05/0.1/0.3 on the mini model past its blank plateau; from the base model 0.01: 0.03
# reads the organisations' tests 3-9% better but quadruples the public CER in round 1 (0.1 was worse)
SGD_SCRATCH_LR, SGD_FINETUNE_LR = 0.1, 0.01
MIN_LR_RATIO = 0.05                   # where `lr-decay = cosine` ends, as a share of the local rate

Aggregate = Literal["all", "backbone", "fedbn"]
# The server's synthetic validation sets (data.organisations): the public mix, or the members' own styles.
VAL_SETS = ("public", "members")


class ConfigError(StepConfigError):
    """A run-config value that cannot be used; the message names the key."""


def runs_root() -> Path:
    return Path(os.environ.get(RUNS_ROOT_ENV) or Path.home() / ".fedocr" / "runs")


@dataclass(frozen=True)
class FlConfig:
    num_rounds: int = 3                # federated rounds
    local_epochs: float = 1.0          # passes over its own data per client per round
    lr: float = 0.0                    # local learning rate; 0: the client optimizer's default for the starting point
    client_optimizer: str = "adamw"    # "adamw", or "sgd" with momentum (FedAvg's original client optimizer)
    lr_decay: str = "cosine"           # local rate over the rounds: "cosine" decays it to 5% (the baselines too), or "none"
    # The update pipeline's flat keys: each step's config (federated.pipeline) validates and reads them.
    server_lr: float = ApplyConfig.server_lr               # w <- w + server_lr * mean delta (1: plain FedAvg)
    server_momentum: float = MomentumConfig.momentum       # FedAvgM: step along v <- m * v + mean delta (0: FedAvg)
    batch_size: int = 16
    fraction_train: float = 0.4        # share of connected clients sampled per round (never below min_accepted)
    min_accepted: int = 2              # participation threshold: fewer accepted updates -> round not applied
    aggregate: Aggregate = AggregateConfig.aggregate  # "backbone": each client keeps its CTC head (FedPer); "fedbn": its BatchNorm layers
    initial_model: str = "auto"        # "auto" (models/base.pt for the default vocabulary, else scratch), "scratch" or a .pt path
    model_size: str = "tiny"           # CRNN size when starting from scratch
    charset: str = "auto"              # vocabulary from scratch: "default", "mini", or "auto" (mini for a mini federation)
    federation: str = "three-orgs"     # synthetic organisations in simulation (see data.organisations)
    lines_per_client: int = 400        # synthetic training lines per node (x its size in ten-branches; simulation)
    test_lines: int = 100              # synthetic test lines per organisation (final report)
    val_lines: int = 200               # server-side validation lines (synthetic sets)
    val_data: str = "public"           # what the server validates on: "public", "members" or an absolute data path
    round_deadline_s: float = 300.0    # replies later than this are dropped as stragglers
    wait_for_nodes_s: float = 120.0    # how long a round waits for enough connected nodes
    max_update_norm: float = CheckConfig.max_update_norm   # L2 bound on an update's float tensors
    max_examples: int = CheckConfig.max_examples           # bound on the example count a client claims
    max_examples_ratio: float = CheckConfig.max_examples_ratio   # a claim weighs at most this x the round's median
    replay_window: int = CheckConfig.replay_window         # rounds of update digests kept to catch a replay
    max_norm_ratio: float = CheckConfig.max_norm_ratio     # reject above this x the median recent update norm
    seed: int = 0                      # client sampling, local shuffling, synthetic data
    out_dir: str = "fl-run"            # models, state and report.json (relative: under $FEDOCR_RUNS)
    store: str = "runs.db"             # SQLite run store (relative: under $FEDOCR_RUNS)
    sign_key: str = ""                 # Ed25519 private key (`fedocr fl signing-key`): sign every model it writes
    run_name: str = ""                 # label shown by `fedocr fl runs` (default: the out-dir name)
    baselines: bool = True             # after the last round: train local-only and centralized baselines (simulation)
    eval_every: int = 0                # federated evaluation on each node's held-out lines every k rounds (0: last round only)
    eval_local_baseline: bool = False  # at the last round each node also trains and scores its own local-only model
    faults: str = DrillConfig.faults   # drills only: "client:kind@round,..." kind = crash|hang|nan|huge|charset
    # The steps' own dotted keys (`compress.top-k = 0.1`, `rollback.enabled = true`), with their defaults.
    steps: dict[str, Any] = field(default_factory=section_defaults)
    # Canaries and the privacy audit (`canary.*`, `audit.*` keys; federated.sim.canaries).
    audit: AuditConfig = field(default_factory=AuditConfig)

    def __post_init__(self) -> None:
        def bad(key: str, why: str) -> ConfigError:
            return ConfigError(f"run config {key.replace('_', '-')}: {why}")

        if self.num_rounds < 1:
            raise bad("num_rounds", "must be at least 1")
        if not self.local_epochs > 0:
            raise bad("local_epochs", "must be positive")
        if not self.lr >= 0:
            raise bad("lr", "must be positive (or 0 for the default of the starting point)")
        if self.lr_decay not in ("none", "cosine"):
            raise bad("lr_decay", f"{self.lr_decay!r} is not 'none' or 'cosine'")
        if self.client_optimizer not in ("adamw", "sgd"):
            raise bad("client_optimizer", "must be adamw or sgd")
        if self.batch_size < 1:
            raise bad("batch_size", "must be at least 1")
        if not 0 < self.fraction_train <= 1:
            raise bad("fraction_train", "must be in (0, 1]")
        if self.min_accepted < 1:
            raise bad("min_accepted", "must be at least 1")
        if self.seed < 0:
            raise bad("seed", "must be 0 or more")
        from fedocr.data.organisations import FEDERATIONS
        from fedocr.model.crnn import SIZES

        if self.model_size not in SIZES:
            raise bad("model_size", f"{self.model_size!r} is not one of {', '.join(SIZES)}")
        if self.federation not in FEDERATIONS:
            raise bad("federation", f"{self.federation!r} is not one of {', '.join(FEDERATIONS)}")
        if self.charset not in ("auto", "default", "mini"):
            raise bad("charset", f"{self.charset!r} is not 'auto', 'default' or 'mini'")
        if not self.round_deadline_s > 0:
            raise bad("round_deadline_s", "must be positive")
        if self.eval_every < 0:
            raise bad("eval_every", "must be 0 (the last round only) or more")
        for key in ("lines_per_client", "test_lines", "val_lines"):
            if getattr(self, key) < 1:
                raise bad(key, "must be at least 1")
        if self.val_data not in VAL_SETS and not self.val_data_path().is_absolute():
            raise bad("val_data", f"{self.val_data!r} is not {' or '.join(map(repr, VAL_SETS))} nor an absolute path")
        try:
            # the steps' own checks, e.g. compress.top-k in [0, 1)
            validate_run_config({k: v for k, v in self.to_run_config().items() if not AuditConfig.owns(k)})
            self.audit.check_federation(self.federation)
            AttackConfig.from_run_config(self.steps).check_nodes(FEDERATIONS[self.federation].names)
        except StepConfigError as exc:
            raise ConfigError(str(exc)) from None

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any], **overrides: Any) -> "FlConfig":
        """Build from Flower's run config (hyphenated keys; nested tables as dotted keys, as Flower
        flattens them); unknown keys are refused by name."""
        known = {f.name: f for f in fields(cls) if f.name not in ("steps", "audit")}
        values: dict[str, Any] = {}
        steps_default = section_defaults()
        steps = dict(steps_default)
        audit: dict[str, Any] = {}
        for key, value in {**_flatten(run_config), **{k.replace("_", "-"): v for k, v in overrides.items()}}.items():
            if "." in key:  # a step's key: validated by its step config in __post_init__
                (audit if AuditConfig.owns(key) else steps)[key] = value
                continue
            name = key.replace("-", "_")
            if name not in known:
                raise ConfigError(f"run config {key}: unknown key")
            default = known[name].default
            try:
                values[name] = coerce(value, default)
            except (TypeError, ValueError):
                raise ConfigError(f"run config {key}: expected {type(default).__name__}, got {value!r}") from None
        try:
            audit_config = AuditConfig.from_keys(audit)
        except StepConfigError as exc:
            raise ConfigError(str(exc)) from None
        return cls(**values, steps={k: _typed(v, steps_default.get(k)) for k, v in steps.items()}, audit=audit_config)

    def to_run_config(self) -> dict[str, Any]:
        """Flower's flat run config: hyphenated keys, the steps' dotted keys as they are."""
        flat = {k.replace("_", "-"): v for k, v in asdict(self).items() if k not in ("steps", "audit")}
        return {**flat, **self.steps, **self.audit.to_run_config()}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_(self, **changes: Any) -> "FlConfig":
        return replace(self, **changes)

    # -- derived values ------------------------------------------------------------------
    def clients_per_round(self, available: int) -> int:
        """ceil(fraction x available), never below the participation threshold nor above what is there."""
        # Rounded first: 0.1 x 100 is 10.000000000000002 in floating point, which must sample 10, not 11.
        return min(available, max(self.min_accepted, math.ceil(round(self.fraction_train * available, 9))))

    def initial_model_path(self) -> Path | None:
        """The checkpoint to start from, or None for a fresh model."""
        if self.initial_model == "scratch":
            return None
        if self.initial_model == "auto":
            return base_checkpoint() if self.auto_starts_from_base() else None
        path = Path(self.initial_model).expanduser()
        if not path.is_absolute():
            raise ConfigError(f"run config initial-model: use an absolute path, got {self.initial_model!r}")
        if not path.is_file():
            raise ConfigError(f"run config initial-model: {path} does not exist")
        return path

    def auto_starts_from_base(self) -> bool:
        """'auto' means the shipped base model, except for a run that names the mini vocabulary,
        which the base model's 6,946 classes cannot serve."""
        base = base_checkpoint()
        return self.initial_model == "auto" and self.vocabulary() != "mini" and base is not None and base.is_file()

    def val_data_path(self) -> Path:
        """`val-data` as a path (when it names no synthetic set). Only the server reads it, so only
        the server checks that it exists: a node has no copy of the consortium's validation lines."""
        try:
            return Path(self.val_data).expanduser()
        except RuntimeError as exc:   # "~someone/..." for a user this machine does not know
            raise ConfigError(f"run config val-data: {exc}") from None

    def vocabulary(self) -> str:
        """The named vocabulary: "auto" is the mini one for a mini federation (its tiny model from
        scratch), else the default GB2312 one."""
        if self.charset != "auto":
            return self.charset
        from fedocr.data.organisations import FEDERATIONS

        return "mini" if FEDERATIONS[self.federation].mini else "default"

    def local_lr(self) -> float:
        """The learning rate clients (and baselines) use. Fine-tuning a trained model at a
        from-scratch rate wrecks it within a round (measured: public CER 0.35% -> 5%); each client
        optimizer has its own pair of rates."""
        if self.lr:
            return self.lr
        scratch, finetune = (SGD_SCRATCH_LR, SGD_FINETUNE_LR) if self.client_optimizer == "sgd" else (SCRATCH_LR, FINETUNE_LR)
        if self.initial_model == "auto":
            return finetune if self.auto_starts_from_base() else scratch
        return scratch if self.initial_model == "scratch" else finetune  # a named checkpoint is trained

    def decays(self) -> bool:
        """Whether the local rate changes over the run (a one-round run has nothing to decay over)."""
        return self.lr_decay == "cosine" and self.num_rounds > 1

    def round_lr(self, server_round: int) -> float:
        """The local rate of one round: constant, or a cosine over the rounds towards
        MIN_LR_RATIO, so the last rounds average small, quiet steps as centralized training's
        end of schedule does. Round r trains at the cosine's value where it starts, (r-1)/R of
        the way, so the last round still learns (3 rounds: 100%, 76%, 29%)."""
        lr = self.local_lr()
        if not self.decays():
            return lr
        progress = min(max(server_round - 1, 0) / self.num_rounds, 1.0)
        return lr * (MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5 * (1 + math.cos(math.pi * progress)))

    def out_path(self) -> Path:
        return _under_root(self.out_dir)

    def store_path(self) -> Path:
        return _under_root(self.store)


def _typed(value: Any, default: Any) -> Any:
    """A step key's value as its default's type where it converts; else as given, for the step's
    config to refuse by name."""
    try:
        return value if default is None else coerce(value, default)
    except (TypeError, ValueError):
        return value


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"compress": {"top-k": 0.1}} -> {"compress.top-k": 0.1} (a TOML table, as Flower reads it)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _under_root(value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else runs_root() / path


def local_recipe(cfg: FlConfig, steps: int, seed: int, lr: float | None = None, decay: bool = False) -> TrainConfig:
    """How a client trains locally, and the baselines with it: a short warm-up, then a constant
    rate (a cosine decay inside every round would spend most local steps at a tiny rate; with
    `lr-decay = cosine` the server lowers the rate from round to round instead). `lr`: the rate
    the server resolved for this round (it knows what the federation started from); else the
    config's. `decay`: a baseline's whole run decays as the rounds of the federation do."""
    return TrainConfig(max_steps=steps, batch_size=cfg.batch_size, lr=lr or cfg.local_lr(),
                       schedule="cosine" if decay else "constant", min_lr_ratio=MIN_LR_RATIO,
                       optimizer=cfg.client_optimizer,  # type: ignore[arg-type]
                       warmup_steps=max(1, min(20, steps // 5)), seed=seed, log_every=10**9)


def local_seed(run_seed: int, client: str, server_round: int) -> int:
    """Local training's seed (data order, augmentation, dropout) from (run seed, node, round): each
    node draws its own stream, and a re-run with the same seed draws the same."""
    return zlib.crc32(f"{run_seed}/{client}/{server_round}".encode()) & 0x7FFFFFFF


def local_train_config(cfg: FlConfig, n_lines: int, seed: int, lr: float | None,
                       epochs: float | None = None) -> TrainConfig:
    """One round of local training on `n_lines` lines: `local-epochs` passes, a fresh optimizer
    each round (standard FedAvg)."""
    steps = max(1, round((epochs or cfg.local_epochs) * math.ceil(n_lines / cfg.batch_size)))
    return local_recipe(cfg, steps, seed=seed, lr=lr)
