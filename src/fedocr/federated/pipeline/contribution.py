"""Each node's contribution to a round: leave-one-out and GTG-Shapley values, with a confidence interval.

The utility of a set S of the round's accepted updates is how much the server's validation metric
improves when the aggregate of S (see `contribution.subsets` below) is applied to the round's start model:
v(S) = metric(w) - metric(w + aggregate(S)), so v(empty) = 0 and a helpful node adds a positive
value. The metric is the CTC loss on the server's validation lines (`val_loss`, the default: CER
moves in steps of one character on a small validation set, so most subsets would tie) or the CER
(`val_cer`); the other metric is computed from the same evaluations and recorded alongside.

What "the aggregate of S" is, `contribution.subsets`:

- `in-round` (the default): the round as it was, with the nodes outside S sending a zero delta
  (keeping their claimed examples and share): a node is valued by what its own delta added to
  this round, so a node that sent nothing is worth exactly 0 (Shapley's null player). FedAvg only:
  a robust rule would count the zeros as votes (a median of mostly zeros), so the builder refuses
  the pair.
- `alone` (Liu et al.'s reconstructed sub-models): the configured aggregator over S's updates
  only, as if S alone had taken part (FedAvg renormalises the example weights over S; a robust
  rule that cannot take so few updates, e.g. a trimmed mean of 1, falls back to FedAvg).
  Counterfactual participation; but a node that sends a zero delta while claiming examples
  shrinks every coalition's step, and where the honest steps overshoot on the validation set
  (non-IID nodes each pulling towards their own domain) that damping earns it credit
  (bench/fl_contribution.py: a free rider ranked first or second at a local rate that overshoots,
  last under `in-round`). The one to use with a robust rule.

- **Leave-one-out** (LOO): v(N) - v(N minus i). n + 1 evaluations; blind to redundancy (two
  nodes with the same data each look useless, since the other covers for it).
- **Shapley value**: i's marginal v(S + i) - v(S) averaged over every order in which the nodes
  could join. Exact from all 2^n subsets when that is no more than the sampling budget would
  evaluate (three organisations: 8 subsets); otherwise GTG-Shapley (Liu et al., "GTG-Shapley:
  Efficient and Accurate Participant Contribution Evaluation in Federated Learning", ACM TIST
  2022, arXiv:2109.02053): Monte-Carlo permutations, *guided* so that each node leads the same
  number of them (its solo marginal is always sampled; with fewer permutations than nodes, a
  random subset of nodes leads), and *truncated* within a permutation once
  the prefix's utility is within `truncation` x |v(N)| of v(N) (the rest of the marginals are
  taken as 0, which saves their evaluations); a round whose aggregate moved nothing
  (v(N) = v(empty)) gives every node 0 without sampling (the paper's between-round truncation).
  Utilities are cached per subset within a round, so a subset is evaluated once.

The confidence interval is the sample mean of a node's marginals +- a Student-t quantile x their
standard error (the guided ordering stratifies the first position, which makes this a slightly
conservative interval); an exact value has a zero-width interval. Over a run, values and
variances add up round by round (rounds are sampled independently).

Contribution needs each node's own update: a step that hides individual updates from the server
(secure aggregation, homomorphic encryption) declares `hides_updates = True`, and the builder
then turns this step into a recorded refusal. NumPy only; the evaluation itself (torch) is the
`StepContext.evaluate` callback the server provides.
"""
from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, ClassVar

import numpy as np

from fedocr.federated.pipeline.settings import StepConfig, bad
from fedocr.federated.pipeline.types import StepContext, StepRecord, Update, Weights

METHODS = ("off", "loo", "shapley", "both")
SUBSETS = ("in-round", "alone")
UTILITIES = ("val_loss", "val_cer")
CONFIDENCE = 0.95
STEP = "contribution"
NO_VALIDATION = ("the server validates no candidate model in this run (aggregate=backbone or fedbn keeps part "
                 "of each node's model at home)")

Players = frozenset[str]
Utility = Callable[[Players], float]


# -- the estimators (pure: a utility over sets of player names) ------------------------------------------

def leave_one_out(players: Sequence[str], utility: Utility) -> dict[str, float]:
    """v(N) - v(N minus i) for each player."""
    full = frozenset(players)
    top = utility(full)
    return {p: top - utility(full - {p}) for p in players}


def exact_shapley(players: Sequence[str], utility: Utility) -> dict[str, float]:
    """The Shapley value from every subset: sum over S not holding i of |S|!(n-|S|-1)!/n! (v(S+i) - v(S))."""
    n = len(players)
    weight = [math.factorial(k) * math.factorial(n - k - 1) / math.factorial(n) for k in range(n)]
    values = dict.fromkeys(players, 0.0)
    for i in players:
        others = [p for p in players if p != i]
        for k in range(n):
            for subset in itertools.combinations(others, k):
                s = frozenset(subset)
                values[i] += weight[k] * (utility(s | {i}) - utility(s))
    return values


@dataclass(frozen=True)
class Walk:
    """One sampled permutation: the order players joined and the position where truncation
    started (marginals from there on are taken as 0)."""
    order: tuple[str, ...]
    stop: int


def replay(walk: Walk, utility: Utility) -> dict[str, float]:
    """Each player's marginal along a walk, for any utility over the subsets the walk evaluated."""
    marginals = dict.fromkeys(walk.order, 0.0)
    previous = utility(frozenset())
    for j in range(walk.stop):
        value = utility(frozenset(walk.order[: j + 1]))
        marginals[walk.order[j]] = value - previous
        previous = value
    return marginals


def _walk(order: tuple[str, ...], utility: Utility, top: float, tolerance: float) -> Walk:
    """Join players in `order` until the prefix's utility is within `tolerance` of v(N)."""
    value = utility(frozenset())
    for j in range(len(order)):
        if abs(top - value) < tolerance:
            return Walk(order, j)
        value = utility(frozenset(order[: j + 1]))
    return Walk(order, len(order))


def t_quantile(p: float, dof: int) -> float:
    """Student's t quantile by the Cornish-Fisher expansion around the normal one (within 3% of
    the exact value from 2 degrees of freedom, far closer from 5): SciPy is not a pipeline import."""
    z = NormalDist().inv_cdf(p)
    if dof <= 0:
        return math.inf
    g1 = (z ** 3 + z) / 4
    g2 = (5 * z ** 5 + 16 * z ** 3 + 3 * z) / 96
    g3 = (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / 384
    return z + g1 / dof + g2 / dof ** 2 + g3 / dof ** 3


@dataclass(frozen=True)
class ShapleyEstimate:
    """Shapley values with their standard errors; `samples`: permutations walked (n! when exact)."""
    values: Mapping[str, float]
    stderr: Mapping[str, float]
    samples: int
    exact: bool
    walks: tuple[Walk, ...] = ()

    @property
    def truncated(self) -> int:
        """Marginals taken as 0 by truncation (each one an evaluation saved, unless cached)."""
        return sum(len(w.order) - w.stop for w in self.walks)

    def ci(self, player: str, confidence: float = CONFIDENCE) -> tuple[float, float]:
        half = t_quantile(0.5 + confidence / 2, self.samples - 1) * self.stderr[player] if not self.exact else 0.0
        return self.values[player] - half, self.values[player] + half

    def replayed(self, utility: Utility) -> "ShapleyEstimate":
        """The same walks scored with another utility (e.g. CER beside loss): no new orders, and a
        cached utility evaluates nothing new."""
        if self.exact and self.samples == 0:   # a round skipped by between-round truncation
            return self
        if self.exact:
            players = sorted(self.values)
            return ShapleyEstimate(exact_shapley(players, utility), dict.fromkeys(players, 0.0), self.samples, True)
        return _estimate([replay(w, utility) for w in self.walks], self.walks)


def _estimate(marginals: Sequence[Mapping[str, float]], walks: Sequence[Walk]) -> ShapleyEstimate:
    players = sorted(marginals[0])
    table = np.array([[m[p] for p in players] for m in marginals])
    k = len(table)
    stderr = table.std(axis=0, ddof=1) / math.sqrt(k) if k > 1 else np.full(len(players), math.inf)
    return ShapleyEstimate(dict(zip(players, table.mean(axis=0).tolist())), dict(zip(players, stderr.tolist())),
                           k, False, tuple(walks))


def gtg_shapley(players: Sequence[str], utility: Utility, rng: np.random.Generator, samples: int,
                truncation: float = 0.0) -> ShapleyEstimate:
    """GTG-Shapley's within-round estimate (Liu et al. 2022): up to `samples` guided permutations,
    each truncated once its prefix is within `truncation` x |v(N) - v(empty)| of v(N). Sampling
    stops early once every node's interval is narrower than that tolerance (it cannot get more
    exact than the truncation lets it), but not before each node has led a permutation."""
    ordered = sorted(players)
    n = len(ordered)
    top, bottom = utility(frozenset(ordered)), utility(frozenset())
    if abs(top - bottom) <= 1e-12:   # between-round truncation: the round moved nothing
        zeros = dict.fromkeys(ordered, 0.0)
        return ShapleyEstimate(zeros, zeros, 0, True)
    tolerance = truncation * abs(top - bottom)
    walks: list[Walk] = []
    marginals: list[dict[str, float]] = []
    # Guided: nodes lead in turn, the rest in random order. With fewer permutations than nodes the
    # leaders are a random subset (the first `samples` by name would each get their solo marginal
    # and the others never: a bias towards early names).
    leaders = [ordered[i] for i in (range(n) if samples >= n else rng.choice(n, size=samples, replace=False))]
    for k in range(samples):
        lead = leaders[k % len(leaders)]
        rest = [ordered[i] for i in rng.permutation(n) if ordered[i] != lead]
        walks.append(_walk((lead, *rest), utility, top, tolerance))
        marginals.append(replay(walks[-1], utility))
        if k + 1 >= max(n, 3) and tolerance > 0:
            estimate = _estimate(marginals, walks)
            if all(hi - lo < tolerance for lo, hi in (estimate.ci(p) for p in ordered)):
                return estimate
    return _estimate(marginals, walks)


def shapley(players: Sequence[str], utility: Utility, rng: np.random.Generator, samples: int,
            truncation: float) -> ShapleyEstimate:
    """Exact when all 2^n subsets cost no more evaluations than `samples` permutations could, else GTG."""
    n = len(players)
    if 2 ** n <= samples * n:
        ordered = sorted(players)
        return ShapleyEstimate(exact_shapley(ordered, utility), dict.fromkeys(ordered, 0.0), math.factorial(n), True)
    return gtg_shapley(players, utility, rng, samples, truncation)


class Evaluations:
    """A per-round cache of the metrics of each subset's candidate model (a subset is evaluated once)."""

    def __init__(self, evaluate: Callable[[Players], Mapping[str, float]]) -> None:
        self.evaluate = evaluate
        self.cache: dict[Players, Mapping[str, float]] = {}

    def __call__(self, subset: Players) -> Mapping[str, float]:
        if subset not in self.cache:
            self.cache[subset] = self.evaluate(subset)
        return self.cache[subset]

    def utility(self, metric: str) -> Utility:
        """v(S) = metric(start model) - metric(start model + aggregate of S): improvement is positive."""
        return lambda subset: float(self(frozenset())[metric]) - float(self(subset)[metric])


# -- the step -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ContributionConfig(StepConfig):
    KEYS: ClassVar[dict[str, str]] = {"contribution.method": "method", "contribution.utility": "utility",
                                      "contribution.samples": "samples", "contribution.lines": "lines",
                                      "contribution.truncation": "truncation", "contribution.subsets": "subsets"}

    method: str = "off"          # `contribution.method`: off, loo, shapley or both
    utility: str = "val_loss"    # `contribution.utility`: the validation metric whose improvement is shared out
    samples: int = 20            # `contribution.samples`: GTG-Shapley's budget of permutations per round
    lines: int = 64              # `contribution.lines`: validation lines each evaluation reads (0: all of them)
    truncation: float = 0.01     # `contribution.truncation`: stop a permutation within this share of v(N)
    subsets: str = "in-round"    # `contribution.subsets`: a coalition's step: "in-round" or "alone" (see above)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise bad("contribution.method", f"{self.method!r} is not one of {', '.join(METHODS)}")
        if self.utility not in UTILITIES:
            raise bad("contribution.utility", f"{self.utility!r} is not one of {', '.join(UTILITIES)}")
        if self.samples < 1:
            raise bad("contribution.samples", "must be at least 1 permutation")
        if self.lines < 0:
            raise bad("contribution.lines", "must be 0 (every validation line) or more")
        if self.subsets not in SUBSETS:
            raise bad("contribution.subsets", f"{self.subsets!r} is not one of {', '.join(SUBSETS)}")
        if not 0 <= self.truncation < 1:
            raise bad("contribution.truncation", "must be in [0, 1): a share of the round's whole utility")


Propose = Callable[[Sequence[Update]], Weights]   # a subset of updates -> the candidate weights it gives


def _finite(value: float) -> float | None:
    """A recorded number, or None: NaN and infinity are not JSON (a diverged candidate's loss, the
    interval of a single permutation)."""
    return float(value) if math.isfinite(value) else None


def _node_info(node: str, utility: str, loo: Mapping[str, float] | None, est: ShapleyEstimate | None,
               other: str, loo_other: Mapping[str, float] | None, est_other: ShapleyEstimate | None) -> dict[str, Any]:
    """One node's record: its values on the run's utility (the keys the dashboard reads), then on the other metric."""
    info: dict[str, Any] = {"loo": None, "shapley": None, "shapley_ci": None, "shapley_se": None, "samples": 0,
                            "utility": utility}
    if loo is not None and loo_other is not None:
        info.update({"loo": _finite(loo[node]), f"loo_{other}": _finite(loo_other[node])})
    if est is not None and est_other is not None:
        lo, hi = est.ci(node)
        info.update({"shapley": _finite(est.values[node]), "shapley_se": _finite(est.stderr[node]),
                     "shapley_ci": [lo, hi] if math.isfinite(lo) and math.isfinite(hi) else None,
                     "samples": est.samples, f"shapley_{other}": _finite(est_other.values[node])})
    return info


@dataclass(frozen=True)
class Contribution:
    """Round scorer: each accepted node's LOO and Shapley value, recorded per node and round."""
    config: ContributionConfig
    disabled: str | None = None   # why this run cannot measure contributions (set by the builder)
    name: str = STEP

    def describe(self) -> str:
        c = self.config
        if self.disabled:
            return f"{c.method}: disabled ({self.disabled})"
        return (f"{c.method} of each node's improvement of {c.utility} on {c.lines or 'all'} validation lines, "
                f"coalitions {c.subsets} (GTG-Shapley, Liu et al. 2022: <= {c.samples} permutations, "
                f"truncation {c.truncation:g})")

    def __call__(self, updates: Sequence[Update], propose: Propose, ctx: StepContext) -> None:
        c = self.config
        evaluate = ctx.evaluate
        if self.disabled or evaluate is None:
            ctx.note(self.name, method=c.method, disabled=self.disabled or NO_VALIDATION)
            return
        start = time.perf_counter()
        players = sorted(u.client for u in updates)
        cache = Evaluations(lambda subset: evaluate(propose(coalition(updates, subset, c.subsets))))
        other = next(u for u in UTILITIES if u != c.utility)
        main, second = cache.utility(c.utility), cache.utility(other)
        loo = leave_one_out(players, main) if c.method in ("loo", "both") else None
        loo_other = leave_one_out(players, second) if loo is not None else None
        est = shapley(players, main, ctx.rng, c.samples, c.truncation) if c.method in ("shapley", "both") else None
        est_other = est.replayed(second) if est is not None else None
        ctx.notes += [StepRecord(self.name, p, _node_info(p, c.utility, loo, est, other, loo_other, est_other))
                      for p in players]
        ctx.note(self.name, method=c.method, utility=c.utility, subsets=c.subsets, seconds=time.perf_counter() - start,
                 evaluations=len(cache.cache), full=_finite(main(frozenset(players))),
                 estimator=None if est is None else "exact" if est.exact else "gtg",
                 permutations=0 if est is None else est.samples, truncated=0 if est is None else est.truncated)


def coalition(updates: Sequence[Update], members: Players, subsets: str) -> list[Update]:
    """The updates a coalition's step is aggregated from (`contribution.subsets`), in name order."""
    ordered = sorted(updates, key=lambda u: u.client)
    if subsets == "alone":
        return [u for u in ordered if u.client in members]
    return [u if u.client in members else u.with_tensors({k: np.zeros_like(v) for k, v in u.tensors.items()})
            for u in ordered]


def hidden_by(steps: Iterable[Any]) -> str | None:
    """The first step that hides individual updates from the server (secure aggregation, HE), if any."""
    return next((s.name for s in steps if getattr(s, "hides_updates", False)), None)


def score_steps(config: ContributionConfig) -> list[Contribution]:
    return [Contribution(config)] if config.method != "off" else []


def cumulate(records: Iterable[StepRecord], confidence: float = CONFIDENCE) -> dict[str, Any] | None:
    """Per node over a run: the sums of its per-round values, and an interval from the summed
    variances (rounds sample independently). None when no round measured contributions."""
    sums: dict[str, dict[str, Any]] = {}
    utility, subsets = None, None
    for r in records:
        if r.step == STEP and r.client == "*":
            subsets = r.info.get("subsets", subsets)
        if r.step != STEP or r.client == "*" or "utility" not in r.info:
            continue
        utility = r.info["utility"]
        s = sums.setdefault(r.client, {"loo": None, "shapley": None, "variance": 0.0, "rounds": 0})
        s["rounds"] += 1
        for key in ("loo", "shapley"):
            if r.info.get(key) is not None:
                s[key] = (s[key] or 0.0) + float(r.info[key])
        s["variance"] += float(r.info.get("shapley_se") or 0.0) ** 2
    if not sums:
        return None
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    clients = {}
    for client, s in sorted(sums.items()):
        half = z * math.sqrt(s.pop("variance"))
        ci = None if s["shapley"] is None else [s["shapley"] - half, s["shapley"] + half]
        clients[client] = {**s, "shapley_ci": ci}
    ranked = sorted(clients, key=lambda c: -(clients[c]["shapley"] if clients[c]["shapley"] is not None
                                             else clients[c]["loo"] or 0.0))
    return {"utility": utility, "subsets": subsets, "confidence": confidence, "clients": clients, "ranking": ranked}
