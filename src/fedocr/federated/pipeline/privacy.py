"""Differential privacy as steps of the chain, with an RDP accountant whose ledger is step state.

Two guarantees, chosen by `dp.level`:

- `record` — one line of one organisation (DP-SGD, Abadi et al., "Deep Learning with Differential
  Privacy", CCS 2016, arXiv:1607.00133). Local training clips each line's gradient to `dp.clip`
  and adds Gaussian noise of std `dp.noise-multiplier x dp.clip` to every Poisson-sampled
  batch (Opacus, in `fedocr.train.private`). The client step here is the node's ledger: it adds
  the round's steps (sampling rate q = batch / lines) to the accountant, records epsilon, and
  refuses to train once another round would pass `dp.target-epsilon`. The guarantee holds
  against everyone downstream of the node, the server included, so it is the meaningful one
  for a few silos (three hospitals cannot hide which of them took part).
- `client` — one node's whole contribution (DP-FedAvg, McMahan et al., "Learning Differentially
  Private Recurrent Language Models", ICLR 2018, arXiv:1710.06963). Each client clips its
  update to L2 norm `dp.clip`; the server clips it again (it must not trust the client to),
  weighs every update equally, divides the sum by the number sampled (the fixed-denominator
  estimator) and adds Gaussian noise of std `dp.noise-multiplier x dp.clip / sampled`. The
  server's ledger accounts each round as Poisson sampling at q = sampled / available, the
  accounting of McMahan et al. and of Flower and TF Privacy (our sampler draws a fixed-size
  sample: that accounting is the standard approximation of it). It needs many clients: with
  three, every round is a full-participation Gaussian mechanism (see ../shared/notes).

  Under secure aggregation (`secure.method` secagg+ or ckks) the server sees only the sum, so it
  cannot add the noise to a sum it never saw in the clear: the noise is **distributed** (as in
  Kairouz et al., "The Distributed Discrete Gaussian Mechanism", ICML 2021, arXiv:2102.06387, with
  continuous Gaussians). Each sampled node clips its update, weighs itself 1, and adds
  N(0, (z x clip)^2 / sampled) before masking or encrypting; the m nodes that make it into the sum
  add N(0, (z x clip)^2 x m / sampled) together, which the server's ledger accounts as noise
  multiplier z x sqrt(m / sampled): a node that drops out costs privacy, recorded, never hidden.
  The noise multiplier must be fixed in the run config (a node must not take it from the server),
  and the nodes trust the server's count of the sampled nodes.

Noise comes from the OS's entropy, never from the run seed (recorded with the run, so a seeded
noise stream could be regenerated and subtracted): DP runs are not bit-reproducible.

Epsilon is computed with dp-accounting's RDP accountant at `dp.delta`. A ledger is a list of
(q, noise multiplier, steps) entries in the step's state, so it is checkpointed with the server
state or kept on the node's disk, and a restart continues the count. With `dp.noise-multiplier
= 0` the noise is calibrated so that the planned rounds end exactly at `dp.target-epsilon`.
"""
from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal

import numpy as np

from fedocr.federated.pipeline.checks import is_float, l2_norm
from fedocr.federated.pipeline.settings import StepConfig, bad
from fedocr.federated.pipeline.types import Cohort, StepContext, Update, Weights

Level = Literal["none", "record", "client"]
SAMPLED = "sampled"   # the task's count of nodes sampled this round (distributed noise divides by it)
Ledger = list[list[float]]   # [[sampling rate, noise multiplier, steps], ...]
RDP_ORDERS = [*range(2, 65), 128, 256, 512]   # integer orders: closed form, no convergence warnings


def epsilon(ledger: Iterable[Iterable[float]], delta: float) -> float:
    """Epsilon at `delta` of Poisson-subsampled Gaussian steps composed (RDP, add/remove one)."""
    import dp_accounting   # here, not at the top: its scipy costs every ClientApp process (one per message) 2 s

    steps_at: dict[tuple[float, float], int] = {}   # a long run repeats a few (q, z): compose each once
    for q, z, steps in ledger:
        steps_at[(float(q), float(z))] = steps_at.get((float(q), float(z)), 0) + int(steps)
    accountant = dp_accounting.rdp.RdpAccountant(RDP_ORDERS)
    for (q, z), steps in steps_at.items():
        if steps:
            accountant.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), steps)
    return float(accountant.get_epsilon(delta))


def calibrate_noise(target_epsilon: float, delta: float, q: float, steps: int) -> float:
    """The smallest noise multiplier whose `steps` steps at sampling rate q spend `target_epsilon`."""
    import dp_accounting

    def event(z: float) -> dp_accounting.DpEvent:
        return dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), steps)

    return float(dp_accounting.calibrate_dp_mechanism(
        lambda: dp_accounting.rdp.RdpAccountant(RDP_ORDERS), event, target_epsilon, delta,
        dp_accounting.LowerEndpointAndGuess(0.05, 1.0), tol=1e-3))


def secret_rng() -> np.random.Generator:
    """A generator seeded from the OS's entropy: DP noise nobody can regenerate from the run."""
    return np.random.default_rng(secrets.randbits(128))


def clip_to(tensors: Mapping[str, np.ndarray], bound: float) -> tuple[Weights, float]:
    """The float tensors scaled so their joint L2 norm is at most `bound` (integer buffers
    unchanged), and the norm before clipping."""
    norm = l2_norm(tensors)
    scale = min(1.0, bound / norm) if norm > 0 else 1.0
    return {k: (v * scale).astype(v.dtype) if is_float(v) else v for k, v in tensors.items()}, norm


# `dp.train`: the parameters record-level DP-SGD trains (by name prefix; the rest stay as they
# arrived). The noise vector's norm grows with the square root of the parameters it covers, while
# the clipped signal does not, so training fewer parameters keeps more of the signal (Tramèr &
# Boneh, "Differentially Private Learning Needs Better Features (or Much More Data)", ICLR 2021).
DP_TRAIN: dict[str, tuple[str, ...]] = {"all": (), "sequence": ("rnn.", "skip.", "head."), "head": ("head.",)}


@dataclass(frozen=True)
class DpConfig(StepConfig):
    KEYS: ClassVar[dict[str, str]] = {"dp.level": "level", "dp.noise-multiplier": "noise_multiplier",
                                      "dp.clip": "clip", "dp.delta": "delta", "dp.target-epsilon": "target_epsilon",
                                      "dp.train": "train", "num-rounds": "rounds", "secure.method": "secure_method"}

    level: Level = "none"          # `dp.level`: "none", "record" (DP-SGD per line) or "client" (DP-FedAvg per node)
    noise_multiplier: float = 0.0  # `dp.noise-multiplier`: noise std / clip; 0: calibrated to dp.target-epsilon
    clip: float = 1.0              # `dp.clip`: L2 bound of a line's gradient (record) or of an update (client)
    delta: float = 1e-5            # `dp.delta`: the delta of the (epsilon, delta) guarantee
    target_epsilon: float = 0.0    # `dp.target-epsilon`: the budget; 0: none (then a noise multiplier is needed)
    train: str = "all"             # `dp.train`: what DP-SGD trains: all, sequence (LSTM, skip, head) or head
    rounds: int = 3                # `num-rounds`: the planned rounds a calibrated noise spreads the budget over
    secure_method: str = "none"    # `secure.method`: under secure aggregation, client-level noise is distributed

    def __post_init__(self) -> None:
        if self.level not in ("none", "record", "client"):
            raise bad("dp.level", f"{self.level!r} is not 'none', 'record' or 'client'")
        if self.train not in DP_TRAIN:
            raise bad("dp.train", f"{self.train!r} is not one of {', '.join(DP_TRAIN)}")
        if self.train != "all" and self.level != "record":
            raise bad("dp.train", "chooses what record-level DP-SGD trains: it needs dp.level = \"record\"")
        if self.level == "none":
            return
        if self.noise_multiplier < 0 or (self.noise_multiplier == 0 and self.target_epsilon <= 0):
            raise bad("dp.noise-multiplier", "must be > 0, or 0 with dp.target-epsilon > 0 to calibrate it "
                                             "(noise 0 gives no privacy)")
        if self.target_epsilon < 0:
            raise bad("dp.target-epsilon", "must be > 0 (or 0 for no budget)")
        if not self.clip > 0:
            raise bad("dp.clip", "must be > 0")
        if not 0 < self.delta < 1:
            raise bad("dp.delta", "must be in (0, 1)")
        if self.distributed and not self.noise_multiplier:
            raise bad("dp.noise-multiplier", "under secure aggregation each node adds its share of the noise, so the "
                                             "noise multiplier must be fixed in the run config, not calibrated")

    @property
    def distributed(self) -> bool:
        """Client-level noise added by the nodes (the server sees only the sum)."""
        return self.level == "client" and self.secure_method != "none"

    def check_population(self, n: int, what: str) -> None:
        """delta must be well below 1/n, or the guarantee allows publishing a record outright."""
        if self.level != "none" and self.delta >= 1 / n:
            raise bad("dp.delta", f"{self.delta:g} >= 1/n for n = {n} {what}: choose delta < {1 / n:.2g}")

    def noise_for(self, q: float, steps: int) -> float:
        """The noise multiplier: as configured, or calibrated so `steps` at rate q spend the target."""
        return self.noise_multiplier or calibrate_noise(self.target_epsilon, self.delta, q, steps)

    def fixed_noise(self, state: dict[str, Any], q: float, steps: int) -> float:
        """The noise multiplier, fixed in the step's state the first time it is needed."""
        z = float(state.get("noise") or self.noise_for(q, steps))
        state["noise"] = z
        return z

    def ledger_terms(self) -> str:
        """How the noise is chosen and the budget kept, as `fedocr fl steps` prints it."""
        noise = f"z={self.noise_multiplier:g}" if self.noise_multiplier else "z calibrated to the budget"
        budget = f", stop at epsilon {self.target_epsilon:g}" if self.target_epsilon else ""
        return f"{noise}; RDP ledger at delta {self.delta:g}{budget}"

    def budget_note(self, spent: float) -> dict[str, Any]:
        return {"epsilon": round(spent, 4), "delta": self.delta,
                **({"target_epsilon": self.target_epsilon} if self.target_epsilon else {})}

    def refusal(self, ledger: Ledger, q: float, z: float, steps: int) -> str | None:
        """Why the next `steps` would pass the budget (None: they fit, or there is no budget)."""
        if not self.target_epsilon:
            return None
        after = epsilon([*ledger, [q, z, steps]], self.delta)
        if after <= self.target_epsilon * (1 + 1e-6):
            return None
        return (f"privacy budget spent: epsilon {epsilon(ledger, self.delta):.3f} now, {after:.3f} after this "
                f"round > dp.target-epsilon {self.target_epsilon:g} (delta {self.delta:g})")


@dataclass(frozen=True)
class RecordLedger:
    """Client step (record level): account the round's DP-SGD steps and record epsilon.

    Before training it hands the trainer its DP-SGD settings (`prepare`); local training
    reports its steps and sampling rate in the update's metrics (`train-steps`, `sample-rate`).
    The ledger lives in this step's state, which the node keeps on its own disk."""
    config: DpConfig
    name: str = "dp-sgd"

    def describe(self) -> str:
        parts = ", ".join(prefix.rstrip(".") for prefix in DP_TRAIN[self.config.train])
        trains = f", training only {parts}" if parts else ""
        return (f"record-level DP-SGD in local training: per-line gradient clip {self.config.clip:g}{trains}, "
                f"{self.config.ledger_terms()}")

    def prepare(self, ctx: StepContext, lines: int, q: float, steps: int) -> tuple[dict[str, Any], str | None]:
        """Before local training: DP-SGD's settings for the trainer (the noise multiplier is fixed
        at the node's first round) and why this round must not run, if it would pass the budget."""
        self.config.check_population(lines, "training lines on this node")
        z = self.config.fixed_noise(ctx.state, q, steps * self.config.rounds)
        settings = {"dp_noise_multiplier": z, "dp_max_grad_norm": self.config.clip,
                    "dp_trainable": DP_TRAIN[self.config.train]}
        return settings, self.config.refusal(ctx.state.get("ledger", []), q, z, steps)

    def __call__(self, update: Update, ctx: StepContext) -> Update:
        q, steps, z = float(update.metrics["sample-rate"]), int(update.metrics["train-steps"]), float(ctx.state["noise"])
        ledger: Ledger = [*ctx.state.get("ledger", []), [q, z, steps]]
        ctx.state["ledger"] = ledger
        spent = epsilon(ledger, self.config.delta)
        return update.noted(self.name, sample_rate=q, noise_multiplier=z, steps=steps,
                            **self.config.budget_note(spent))


@dataclass(frozen=True)
class ClipUpdate:
    """Client step (client level): scale the update to L2 norm at most `dp.clip`."""
    config: DpConfig
    name: str = "dp-clip"

    def describe(self) -> str:
        return f"clip the update to L2 norm {self.config.clip:g} (DP-FedAvg)"

    def __call__(self, update: Update, ctx: StepContext) -> Update:
        clipped, norm = clip_to(update.tensors, self.config.clip)
        return update.with_tensors(clipped).noted(self.name, norm=norm, clipped=norm > self.config.clip * (1 + 1e-6))


@dataclass(frozen=True)
class DistributedNoise:
    """Client step (client level, under secure aggregation): weigh this node 1 and add its share
    of the round's noise, N(0, (z x clip)^2 / sampled), drawn from the OS's entropy."""
    config: DpConfig
    name: str = "dp-node-noise"

    def describe(self) -> str:
        return (f"add N(0, ({self.config.noise_multiplier:g} x {self.config.clip:g})^2 / sampled) before the "
                f"secure sum (distributed DP-FedAvg); weigh this node 1")

    def __call__(self, update: Update, ctx: StepContext) -> Update:
        sampled = int(ctx.task.get(SAMPLED, 0))
        if sampled < 1:
            raise ValueError("distributed DP needs the number of nodes sampled this round in the task")
        std = self.config.noise_multiplier * self.config.clip / np.sqrt(sampled)
        rng = secret_rng()
        noisy = {k: (v + rng.normal(0.0, std, v.shape)).astype(v.dtype) if is_float(v) else v
                 for k, v in update.tensors.items()}
        return replace(update.with_tensors(noisy), examples=1).noted(self.name, noise_std=std, sampled=sampled,
                                                                    claimed_examples=update.examples)


@dataclass(frozen=True)
class EqualClip(ClipUpdate):
    """Server screening step (client level): clip again (a client may skip its own clipping) and
    weigh every node equally, so one node moves the sum by at most `dp.clip`."""
    name: str = "dp-server-clip"

    def describe(self) -> str:
        return f"clip each update to L2 norm {self.config.clip:g} again; weigh nodes equally"

    def __call__(self, update: Update, ctx: StepContext) -> Update:
        clipped = super().__call__(update, ctx)
        return replace(clipped.noted(self.name, claimed_examples=update.examples), examples=1)


@dataclass(frozen=True)
class GaussianNoise:
    """Server transform (client level): the equal-weight mean becomes sum / sampled, plus
    N(0, (z * clip / sampled)^2) on every float entry; the round goes into the server's ledger."""
    config: DpConfig
    name: str = "dp-noise"

    def describe(self) -> str:
        if self.config.distributed:
            return (f"sum / sampled; the nodes' noise accounted as z x sqrt(summed / sampled), "
                    f"{self.config.ledger_terms()}")
        return f"Gaussian noise std z * {self.config.clip:g} / sampled, {self.config.ledger_terms()}"

    def noise(self, ctx: StepContext, q: float) -> float:
        return self.config.fixed_noise(ctx.state, q, self.config.rounds)

    def refusal(self, ctx: StepContext, cohort: Cohort) -> str | None:
        """Before a round: why it must not run (too few nodes for delta, or the budget would be passed)."""
        try:
            self.config.check_population(cohort.available, "connected nodes")
        except ValueError as exc:
            return str(exc)
        q = cohort.sampling_rate
        return self.config.refusal(ctx.state.get("ledger", []), q, self.noise(ctx, q), 1)

    def __call__(self, step: Weights, ctx: StepContext) -> Weights:
        cohort = ctx.cohort
        if cohort is None or cohort.sampled < 1:
            raise ValueError("dp-noise needs the round's cohort (sampled and aggregated counts)")
        q, z = cohort.sampling_rate, self.noise(ctx, cohort.sampling_rate)
        share = cohort.aggregated / cohort.sampled   # mean over the aggregated -> sum / sampled
        if self.config.distributed:   # the nodes added it: the m summed shares make z x sqrt(m / sampled)
            z = z * float(np.sqrt(share))
            std, rng = 0.0, None
        else:
            std, rng = z * self.config.clip / cohort.sampled, secret_rng()
        noisy = {k: (v * share + (rng.normal(0.0, std, v.shape) if rng else 0.0)).astype(v.dtype) if is_float(v)
                 else v for k, v in step.items()}
        ledger: Ledger = [*ctx.state.get("ledger", []), [q, z, 1]]
        ctx.state["ledger"] = ledger
        ctx.note(self.name, sample_rate=q, noise_multiplier=z, sampled=cohort.sampled, aggregated=cohort.aggregated,
                 **({"distributed": True} if self.config.distributed else {"noise_std": std}),
                 **self.config.budget_note(epsilon(ledger, self.config.delta)))
        return noisy


def client_steps(config: DpConfig) -> list[Any]:
    if config.distributed:
        return [ClipUpdate(config), DistributedNoise(config)]
    return {"none": [], "record": [RecordLedger(config)], "client": [ClipUpdate(config)]}[config.level]


def screen_steps(config: DpConfig) -> list[Any]:
    # under secure aggregation the server sees the mean only: the nodes clip and weigh themselves
    return [EqualClip(config)] if config.level == "client" and not config.distributed else []


def transform_steps(config: DpConfig) -> list[GaussianNoise]:
    return [GaussianNoise(config)] if config.level == "client" else []
