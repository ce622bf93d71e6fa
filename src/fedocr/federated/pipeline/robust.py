"""Robust aggregation: what one malicious or broken node can do to the average, bounded.

FedAvg lets a single well-formed update steer the model (a boosted update, Bagdasaryan et al.
2020, arXiv:1807.00459, replaces it outright). The server's check rejects updates above an
absolute norm bound; these rules work inside it, on the updates that passed:

- **clip** scales an update down to a bound (never rejects it): an absolute `robust.clip-norm`,
  or `robust.clip-median` times this round's median update norm, which follows the honest norms
  without the operator knowing them (the median moves only if half the nodes are malicious).
- **median**: the coordinate-wise median (Yin et al., "Byzantine-Robust Distributed Learning:
  Towards Optimal Statistical Rates", ICML 2018, arXiv:1803.01498).
- **trimmed-mean**: per coordinate, drop the `f` largest and `f` smallest values and average the
  rest (Yin et al. 2018). The median is the trimmed mean that trims all but the middle.
- **krum** / **multi-krum**: score each update by the summed squared distances to its n - f - 2
  nearest others and keep the best one (Krum) or the best m (Multi-Krum, averaged), Blanchard
  et al., "Machine Learning with Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS 2017.
- **trust**: FLTrust (Cao et al., "FLTrust: Byzantine-robust Federated Learning via Trust
  Bootstrapping", NDSS 2021, arXiv:2012.13995). The server trains the global model on its own
  small, clean root set (`robust.root-lines` of its public lines, for the median local steps the
  round's clients report, as the paper has both take the same local iterations) and uses that
  update g0 as the direction to trust: each update gets the trust score
  max(0, cos(g_i, g0)), is rescaled to g0's norm (so a boosted update weighs no more than a
  small one), and the step is the trust-weighted mean. An update pointing away from g0 gets no
  weight at all; it needs no bound on the number of malicious nodes, but it is only as good as
  the root set is representative (an organisation unlike the public lines earns less trust).

Robust rules count each node once: the example count a node claims is unverifiable, and an
example-weighted rule lets one node that lies about it dominate (`fedavg` after clipping keeps
FedAvg's weighting). Each rule records, per node and round, a `score`: the update's norm, the
clip factor, its cosine similarity to the aggregate, the rule's weight for it, its contribution
(the share of the step its kept part makes up, projected on the step: they sum to 1) and a
verdict (left out, clipped, opposed to the step, down-weighted, kept), so an operator sees who
was flagged and why. A node is flagged (suspected) when the rule left it out, its norm had to be
clipped, or it pulls against the aggregate (negative cosine); merely down-weighted is recorded but
not flagged: a trimmed mean drops most coordinates of an honest branch with three times the
others' data (it takes more local steps, so its values are the extremes), which is no sign of
malice, and a flag is what a quarantine would act on.

The recommended defence (`RECOMMENDED`): clip to 2x the median norm, leave out updates that match
another one around the round's median (`collusion_cosine`, `twin_cosines`: colluders sending one
crafted update), then the trimmed mean with f = the number of malicious nodes to tolerate, then the
same again without any update opposed to that step (`drop_opposed`). Clipping first bounds what a
boosted update can do to any coordinate; the trimmed mean then drops a sign-flipped or noisy
update's extreme values, and the second pass what is left of a sign-flipped one (bench/fl_robust.py:
at 12 rounds a sign flip by 2 of 10 branches cost the trimmed mean alone 1.25x the clean CER, more
than FedAvg's 1.14x). Unlike Krum it does not exclude f honest nodes every round (on non-IID data
the node unlike the others is often an honest minority domain), and it needs only n >= 2f + 1
updates, not 2f + 3. It still cannot tell small shifts that stay inside the honest spread ("a little
is enough", Baruch et al. 2019) from honest variety unless colluders send them alike, nor colluders
who add enough noise of their own to stay under the threshold (FoolsGold, Fung et al., RAID 2020,
catches those by their accumulated updates, but honest branches' accumulated updates grow alike
too), nor a backdoor that the attacker's update hides inside its honest part.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from fedocr.federated.pipeline.aggregate import example_weights, weighted_average
from fedocr.federated.pipeline.checks import is_float, is_statistic, l2_norm
from fedocr.federated.pipeline.settings import StepConfig, bad
from fedocr.federated.pipeline.types import Aggregate, StepContext, StepRecord, Update, Weights

RULES = ("fedavg", "median", "trimmed-mean", "krum", "multi-krum", "trust")
RECOMMENDED = {"robust.rule": "trimmed-mean", "robust.f": 2, "robust.clip-median": 2.0, "robust.drop-opposed": True,
               "robust.collusion-cosine": 0.99}
LOWEST_COLLUSION_COSINE = 0.9   # honest branches stay far below (bench/fl_robust.py: honest_twin_cosine)
SUSPECT_TWINS = "colluding"      # the verdict of colluders kept because too few others remained
DOWN_WEIGHTED = 0.5   # a contribution below half of a fair 1/n share of the step is "down-weighted"
SUSPECT = ("left out", SUSPECT_TWINS, "clipped", "opposed")   # the verdicts that flag a node
SCORE = "score"       # the step name of the per-node anomaly records


def needed(rule: str, f: int) -> int:
    """The fewest updates a rule can aggregate while tolerating f malicious ones."""
    return {"krum": 2 * f + 3, "multi-krum": 2 * f + 3, "trimmed-mean": 2 * f + 1, "median": 2 * f + 1}.get(rule, 1)


def scaled(tensors: Mapping[str, np.ndarray], factor: float) -> Weights:
    """factor x the float tensors (integer buffers are counters: kept as they are); new arrays."""
    return {k: np.asarray(v * factor, dtype=v.dtype) if is_float(v) else v for k, v in tensors.items()}


def clip(tensors: Mapping[str, np.ndarray], bound: float) -> tuple[Weights, float]:
    """The update scaled down to L2 norm <= bound (float tensors only), and the factor used."""
    norm = l2_norm(tensors)
    if norm <= bound or norm == 0:
        return dict(tensors), 1.0
    return scaled(tensors, bound / norm), bound / norm


def _cast(acc: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """A float64 result back in the reference's dtype (integer buffers rounded)."""
    return np.asarray(acc if is_float(ref) else np.rint(acc), dtype=ref.dtype)


def trimmed_mean(tensors: Sequence[Mapping[str, np.ndarray]], trim: int) -> tuple[Weights, np.ndarray, np.ndarray]:
    """Per coordinate, the mean of the values left after dropping the `trim` largest and `trim`
    smallest; for each update, the share of its coordinates that were kept; and the dot product
    of what it contributed with the result (see `RobustAggregate`)."""
    n = len(tensors)
    if not 0 <= 2 * trim < n:
        raise ValueError(f"trimmed mean of {n} updates cannot drop {trim} from each side")
    out: Weights = {}
    kept, dots = np.zeros(n), np.zeros(n)
    total = 0
    for key, ref in tensors[0].items():
        stack = np.stack([t[key].astype(np.float64) for t in tensors])
        mask = np.zeros(stack.shape, dtype=bool)
        np.put_along_axis(mask, np.argsort(stack, axis=0, kind="stable")[trim:n - trim], True, axis=0)
        mean = np.where(mask, stack, 0.0).sum(axis=0) / (n - 2 * trim)
        out[key] = _cast(mean, ref)
        kept += mask.reshape(n, -1).sum(axis=1)
        total += ref.size
        if is_float(ref):
            dots += (np.where(mask, stack, 0.0) * mean).reshape(n, -1).sum(axis=1) / (n - 2 * trim)
    return out, kept / max(total, 1), dots


def coordinate_median(tensors: Sequence[Mapping[str, np.ndarray]]) -> tuple[Weights, np.ndarray, np.ndarray]:
    """The coordinate-wise median: the trimmed mean that keeps only the middle one or two values
    (with each update's share of kept coordinates, and its contribution as `trimmed_mean`)."""
    return trimmed_mean(tensors, (len(tensors) - 1) // 2)


def _flat(tensors: Mapping[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([v.astype(np.float64).ravel() for v in tensors.values() if is_float(v)] or [np.zeros(0)])


def krum_scores(tensors: Sequence[Mapping[str, np.ndarray]], f: int) -> np.ndarray:
    """Each update's Krum score: the sum of squared distances to its n - f - 2 nearest others."""
    flat = np.stack([_flat(t) for t in tensors])
    sq = np.sum(flat ** 2, axis=1)
    dist = np.maximum(sq[:, None] + sq[None, :] - 2 * flat @ flat.T, 0.0)
    nearest = len(tensors) - f - 2
    return np.array([np.sort(np.delete(row, i))[:nearest].sum() for i, row in enumerate(dist)])


def cosine(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> float:
    """Cosine similarity of two updates' float tensors (0 when either is zero)."""
    x, y = _flat(a), _flat(b)
    denom = float(np.linalg.norm(x) * np.linalg.norm(y))
    return float(x @ y / denom) if denom > 0 else 0.0


def twin_cosines(tensors: Sequence[Mapping[str, np.ndarray]]) -> np.ndarray:
    """Pairwise cosine similarity of the updates after subtracting the round's coordinate-wise
    median: what every node shares (the common descent, AdamW's weight decay) is removed and each
    node's own part remains. Colluders sending one crafted update have the same own part (cosine
    1); honest nodes differ by their data. Their raw updates do not: on ten-branches-mini those of
    two branches of one organisation grew alike round by round as the learning rate fell, and so
    did their accumulated updates (FoolsGold's signal), so neither tells them from colluders for
    long (bench/fl_robust.py records the honest maximum of this cosine: honest_twin_cosine).
    Computed tensor by tensor: memory of one tensor per node, not of whole models."""
    n = len(tensors)
    gram = np.zeros((n, n))
    for key, ref in tensors[0].items():
        if not is_float(ref) or is_statistic(key):
            continue
        stack = np.stack([t[key].astype(np.float32).ravel() for t in tensors])
        own = stack - np.median(stack, axis=0)
        gram += (own @ own.T).astype(np.float64)
    norms = np.sqrt(np.maximum(np.diag(gram), 0.0))
    return gram / np.maximum(np.outer(norms, norms), 1e-30)


def trust_scores(tensors: Sequence[Mapping[str, np.ndarray]], root: Mapping[str, np.ndarray]) -> np.ndarray:
    """FLTrust's trust score of each update: max(0, cosine to the server's root update)."""
    return np.array([max(0.0, cosine(t, root)) for t in tensors])


def trust_weighted(tensors: Sequence[Mapping[str, np.ndarray]], root: Mapping[str, np.ndarray]) -> tuple[Weights, np.ndarray]:
    """FLTrust (Cao et al. 2021, eq. 4): sum_i TS_i * (|g0| / |g_i|) g_i / sum_i TS_i, and the
    normalised weights TS_i / sum TS. No update trusted: a zero step (the model stays where it is).
    BatchNorm's running statistics are averaged with the same weights but not rescaled: a scaled
    variance step could turn a variance negative."""
    scores = trust_scores(tensors, root)
    if scores.sum() <= 0:
        return {k: np.zeros_like(v) for k, v in root.items()}, scores
    weights = scores / scores.sum()
    target = l2_norm(root)
    rescaled = [{**scaled(t, target / l2_norm(t)), **{k: v for k, v in t.items() if is_statistic(k)}}
                for t, w in zip(tensors, weights) if w > 0]
    step = weighted_average([(t, float(w)) for t, w in zip(rescaled, weights[weights > 0])])
    return step, weights


@dataclass(frozen=True)
class RobustConfig(StepConfig):
    KEYS: ClassVar[dict[str, str]] = {"robust.rule": "rule", "robust.f": "f", "robust.multi-krum-m": "m",
                                      "robust.clip-norm": "clip_norm", "robust.clip-median": "clip_median",
                                      "robust.root-lines": "root_lines", "robust.drop-opposed": "drop_opposed",
                                      "robust.collusion-cosine": "collusion_cosine",
                                      "min-accepted": "min_accepted",
                                      "max-examples-ratio": "examples_ratio"}

    rule: str = "fedavg"       # `robust.rule`: fedavg, median, trimmed-mean, krum, multi-krum or trust
    f: int = 1                 # `robust.f`: malicious updates per round to tolerate (Krum's f, values trimmed per side)
    m: int = 0                 # `robust.multi-krum-m`: updates Multi-Krum averages (0: n - f)
    clip_norm: float = 0.0     # `robust.clip-norm`: scale updates down to this L2 norm (0: off)
    clip_median: float = 0.0   # `robust.clip-median`: ... or to this multiple of the round's median norm (0: off)
    root_lines: int = 64       # `robust.root-lines`: the server's clean root set for `trust` (its public lines)
    drop_opposed: bool = False  # `robust.drop-opposed`: leave out updates opposed to the rule's step, then aggregate again
    collusion_cosine: float = 0.0   # `robust.collusion-cosine`: leave out updates this alike, median-centred (0: off)
    min_accepted: int = 2      # `min-accepted`: a round is applied with as few updates as this
    examples_ratio: float = 0.0   # `max-examples-ratio` (checks): the fedavg rule caps claims at this x the median

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise bad("robust.rule", f"{self.rule!r} is not one of {', '.join(RULES)}")
        if self.f < 0 or self.m < 0:
            raise bad("robust.f" if self.f < 0 else "robust.multi-krum-m", "must be 0 or more")
        if self.root_lines < 1:
            raise bad("robust.root-lines", "must be at least 1 (the server's root set for robust.rule=trust)")
        if self.clip_norm < 0 or self.clip_median < 0:
            raise bad("robust.clip-norm" if self.clip_norm < 0 else "robust.clip-median", "must be 0 (off) or positive")
        if 0 < self.clip_median < 1:
            raise bad("robust.clip-median", "below 1 would clip the typical honest update")
        if self.collusion_cosine and not LOWEST_COLLUSION_COSINE <= self.collusion_cosine <= 1:
            raise bad("robust.collusion-cosine", f"must be 0 (off) or in [{LOWEST_COLLUSION_COSINE:g}, 1]: below that "
                                                 f"it would leave out honest branches of one organisation")
        if self.drop_opposed and self.rule == "trust":
            raise bad("robust.drop-opposed", "robust.rule=trust already leaves out updates opposed to its root update")
        need = needed(self.rule, self.f)
        if self.min_accepted < need:
            raise bad("robust.rule", f"{self.rule} with robust.f={self.f} needs at least {need} updates per round "
                                     f"(n >= {'2f + 3' if 'krum' in self.rule else '2f + 1'}), but a round may be "
                                     f"applied with min-accepted={self.min_accepted}: raise min-accepted to {need}")
        if self.rule == "multi-krum" and self.m and self.m > self.min_accepted - self.f:
            raise bad("robust.multi-krum-m", f"{self.m} > min-accepted - f = {self.min_accepted - self.f}: "
                                             f"a round may not have that many updates to keep")

    @property
    def active(self) -> bool:
        return (self.rule != "fedavg" or self.clip_norm > 0 or self.clip_median > 0 or self.drop_opposed
                or self.collusion_cosine > 0)

    @property
    def fewest(self) -> int:
        """The fewest updates the rule may be left with after leaving some out: what it needs, and
        never below the participation threshold."""
        return max(needed(self.rule, self.f), self.min_accepted, 1)


@dataclass(frozen=True)
class RobustAggregate:
    """Aggregator: clip, then the configured rule, then score every node against the result."""
    config: RobustConfig
    name: str = "robust"

    def describe(self) -> str:
        c = self.config
        clips = ([f"to {c.clip_norm:g}"] if c.clip_norm else []) + \
            ([f"to {c.clip_median:g} x the median norm"] if c.clip_median else [])
        head = f"clip {' and '.join(clips)}; then " if clips else ""
        rule = {"fedavg": "example-weighted mean (FedAvg)", "median": "coordinate-wise median (Yin et al. 2018)",
                "trimmed-mean": f"trimmed mean dropping {c.f} per side (Yin et al. 2018)",
                "krum": f"Krum with f={c.f} (Blanchard et al. 2017)",
                "multi-krum": f"Multi-Krum with f={c.f}, m={c.m or 'n - f'} (Blanchard et al. 2017)",
                "trust": f"FLTrust: trust = max(0, cosine to the server's update on {c.root_lines} root lines), "
                         f"rescaled to its norm (Cao et al. 2021)"}[c.rule]
        drop = "; leave out updates opposed to that step and aggregate the rest again" if c.drop_opposed else ""
        sybils = (f"leave out updates that match another's around the round's median (cosine >= "
                  f"{c.collusion_cosine:g}: colluders); " if c.collusion_cosine else "")
        return head + sybils + rule + drop + "; score each node"

    def _bound(self, norms: np.ndarray) -> float:
        bounds = [self.config.clip_norm] if self.config.clip_norm else []
        if self.config.clip_median:
            bounds.append(self.config.clip_median * float(np.median(norms)))
        return min(bounds) if bounds else float("inf")

    def _rule(self, updates: Sequence[Update], ctx: StepContext) -> tuple[Weights, np.ndarray, np.ndarray, dict[str, str]]:
        """The step, each update's weight in it, the dot product of its contribution with the step,
        and the updates left out (with why)."""
        c, n, tensors = self.config, len(updates), [u.tensors for u in updates]
        if n < needed(c.rule, c.f):
            raise ValueError(f"{c.rule} with f={c.f} needs {needed(c.rule, c.f)} updates, got {n}")
        if c.rule in ("median", "trimmed-mean"):
            trim = (n - 1) // 2 if c.rule == "median" else c.f
            step, kept, dots = trimmed_mean(tensors, trim)
            return step, kept / (n - 2 * trim), dots, {}
        if c.rule == "trust":
            return self._trust(updates, ctx)
        left: dict[str, str] = {}
        if c.rule == "fedavg":
            counts = example_weights(updates, c.examples_ratio, ctx, self.name)
        else:
            scores = krum_scores(tensors, c.f)
            keep = 1 if c.rule == "krum" else (c.m or n - c.f)
            chosen = sorted(np.argsort(scores, kind="stable")[:keep].tolist())
            counts = [int(i in chosen) for i in range(n)]   # the kept ones, averaged alike (Blanchard et al.)
            worst = float(scores[chosen].max())
            left = {updates[i].client: f"left out by {c.rule}: score {scores[i]:.4g} above the {keep} kept "
                                       f"(<= {worst:.4g})" for i in range(n) if i not in chosen}
        step = weighted_average([(t, k) for t, k in zip(tensors, counts) if k])
        weights = np.array(counts, dtype=np.float64) / sum(counts)
        flat = _flat(step)
        return step, weights, np.array([w * (_flat(t) @ flat) for t, w in zip(tensors, weights)]), left

    def _rule_on(self, updates: Sequence[Update], keep: Sequence[int],
                 ctx: StepContext) -> tuple[Weights, np.ndarray, np.ndarray, dict[str, str]]:
        """The rule on the updates at `keep`, with weights and dots for all of `updates` (0 elsewhere)."""
        if len(keep) == len(updates):
            return self._rule(updates, ctx)
        step, kept_weights, kept_dots, left = self._rule([updates[i] for i in keep], ctx)
        weights, dots = np.zeros(len(updates)), np.zeros(len(updates))
        weights[list(keep)], dots[list(keep)] = kept_weights, kept_dots
        return step, weights, dots, left

    def _colluding(self, updates: Sequence[Update]) -> tuple[dict[str, str], dict[str, float]]:
        """The updates that match another one around the round's median (`twin_cosines`) at
        `robust.collusion-cosine` or above, with why, and each node's closest cosine."""
        cos = twin_cosines([u.tensors for u in updates])
        np.fill_diagonal(cos, -np.inf)   # a node is no twin of itself
        threshold = self.config.collusion_cosine - 1e-9   # identical updates can come out a rounding below 1
        left, closest = {}, {}
        for i, u in enumerate(updates):
            j = int(np.argmax(cos[i]))
            closest[u.client] = float(cos[i, j]) if j != i else 0.0   # j == i: the round's only update
            if j != i and cos[i, j] >= threshold:
                left[u.client] = (f"left out: its update matches {updates[j].client}'s around the round's median "
                                  f"(cosine {cos[i, j]:.4f} >= {self.config.collusion_cosine:g}): colluding")
        return left, closest

    def _without_opposed(self, updates: Sequence[Update], keep: list[int],
                         first: tuple[Weights, np.ndarray, np.ndarray, dict[str, str]],
                         ctx: StepContext, first_notes: int) -> tuple[Weights, np.ndarray, np.ndarray, dict[str, str]]:
        """The rule again without the updates that pull against its first step (negative cosine):
        a sign-flipped update is rarely extreme in enough coordinates for a trimmed mean to drop
        it, yet it opposes the step as a whole. Kept as it was when fewer updates than the rule
        needs or the participation threshold would remain. The second pass trims f per side
        again. Its records replace the first pass's (from `first_notes` on in ctx.notes), so each
        round records one aggregation."""
        step, _, _, left = first
        opposed = {i: cosine(updates[i].tensors, step) for i in keep if updates[i].client not in left}
        opposed = {i: c for i, c in opposed.items() if c < 0}
        rest = [i for i in keep if i not in opposed]
        if not opposed or len(rest) < self.config.fewest:
            return first
        del ctx.notes[first_notes:]
        step, weights, dots, rest_left = self._rule_on(updates, rest, ctx)
        return step, weights, dots, {**rest_left, **{
            updates[i].client: f"left out: opposed to the {self.config.rule} step (cosine {c:.3g})"
            for i, c in opposed.items()}}

    def _trust(self, updates: Sequence[Update], ctx: StepContext) -> tuple[Weights, np.ndarray, np.ndarray, dict[str, str]]:
        """FLTrust against the server's own update on its root lines (see `trust_weighted`)."""
        if ctx.server_update is None:
            raise ValueError("robust.rule=trust needs the server's update on its root lines, and this server has none")
        root = ctx.server_update()
        tensors = [u.tensors for u in updates]
        step, weights = trust_weighted(tensors, root)
        root_norm, flat = l2_norm(root), _flat(step)
        dots = np.array([w * root_norm / max(l2_norm(t), 1e-30) * (_flat(t) @ flat) for t, w in zip(tensors, weights)])
        left = {u.client: f"left out by trust: cosine {cosine(u.tensors, root):.3g} to the server's root update "
                          f"(trust 0)" for u, w in zip(updates, weights) if w == 0}
        ctx.note(self.name, root_norm=root_norm)
        return step, weights, dots, left

    def __call__(self, updates: Sequence[Update], ctx: StepContext) -> Aggregate:
        ordered = sorted(updates, key=lambda u: u.client)  # order-independent, as FedAvg
        norms = np.array([l2_norm(u.tensors) for u in ordered])
        bound = self._bound(norms)
        clipped = [clip(u.tensors, bound) for u in ordered]
        bounded = [u.with_tensors(t) for u, (t, _) in zip(ordered, clipped)]
        colluding, closest = self._colluding(bounded) if self.config.collusion_cosine else ({}, {})
        keep = [i for i, u in enumerate(bounded) if u.client not in colluding]
        twins_kept: set[str] = set()
        if len(keep) < self.config.fewest:   # too few would remain: the rule alone has to bear them
            keep, twins_kept, colluding = list(range(len(bounded))), set(colluding), {}
            ctx.note(self.name, colluders_kept=sorted(twins_kept),
                     why=f"leaving them out would leave fewer than {self.config.fewest} updates")
        first_notes = len(ctx.notes)
        step, weights, dots, left = self._rule_on(bounded, keep, ctx)
        if self.config.drop_opposed:
            step, weights, dots, left = self._without_opposed(bounded, keep, (step, weights, dots, left), ctx,
                                                              first_notes)
        left = {**left, **colluding}
        # A node's contribution: the share of the step that its (kept part of its) update makes up,
        # projected on the step; the contributions sum to 1, and a node pulling against the rest is negative.
        contributions = dots / max(float(_flat(step) @ _flat(step)), 1e-30)
        # Judged by what a node adds to the step, not by a rule's weight (a trimmed mean's kept share
        # says little of what is left of a node's direction). FedAvg weighs by examples: never down-weighted.
        low = DOWN_WEIGHTED / len(keep) if self.config.rule != "fedavg" else -np.inf
        for u, norm, (tensors, factor), weight, share in zip(ordered, norms, clipped, weights, contributions):
            similarity = cosine(tensors, step)
            verdict = ("left out" if u.client in left else SUSPECT_TWINS if u.client in twins_kept
                       else "clipped" if factor < 1 else "opposed" if similarity < 0
                       else "down-weighted" if share < low else "kept")
            ctx.notes.append(StepRecord(SCORE, u.client, {
                "norm": float(norm), "clip": float(factor), "weight": float(weight), "contribution": float(share),
                "cosine": similarity, "verdict": verdict, "flagged": verdict in SUSPECT,
                **({"twin_cosine": closest[u.client]} if self.config.collusion_cosine else {})}))
        ctx.note(self.name, clip_bound=None if bound == float("inf") else bound, median_norm=float(np.median(norms)))
        return Aggregate(step, {u.client: float(w) for u, w in zip(ordered, weights)}, left)


def aggregator(config: RobustConfig) -> RobustAggregate | None:
    """The round's aggregator, or None (the builder's FedAvg) unless a rule or a clip is asked for."""
    return RobustAggregate(config) if config.active else None
