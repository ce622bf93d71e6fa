"""The two chains a run config builds, and how they run.

Client (after local training): [local head] -> [DP clip / DP-SGD ledger] -> [attack] -> [Top-K] -> [quantise]
-> [drill]. Server, per reply: first the decoding steps, in the reverse of the client order (the
last encoding is undone first), then [DP re-clip] -> check; then [contribution] over the accepted
updates (it only records); then aggregate (FedAvg, or a robust rule) -> [momentum]
-> [DP noise] -> apply -> the caller validates -> commit gate. Steps in brackets are there only when the run config asks for
them, so FedAvg is the chain with no optional steps. A new feature is one step module (its
steps, its config dataclass and the factories that turn the config into steps) and one line of
FEATURES here.

Each step draws from its own random stream, seeded from (run seed, round, node, step), so a
run with a fixed seed repeats. Its state is the chain owner's to keep: the server checkpoints
`ServerState.steps`, a node keeps its steps' state on its own disk.
"""
from __future__ import annotations

import copy
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from fedocr.federated.pipeline import (aggregate, attacks, checks, cluster, compress, contribution, drills, personal,
                                       privacy, he, quarantine, robust, secure, transforms)
from fedocr.federated.pipeline.aggregate import ApplyConfig, ApplyStep, FedAvg, MomentumConfig
from fedocr.federated.pipeline.checks import CheckConfig
from fedocr.federated.pipeline.compress import CompressConfig
from fedocr.federated.pipeline.drills import DrillConfig
from fedocr.federated.pipeline.gate import CommitGate, RollbackConfig
from fedocr.federated.pipeline.settings import StepConfig, bad
from fedocr.federated.pipeline.transforms import AggregateConfig, aggregated_keys
from fedocr.federated.pipeline.types import (Aggregate, Aggregator, Applier, ClientStep, Cohort, Gate, RoundScorer,
                                             ScreenStep, StepContext, StepRecord, StepState, StepTransform, Update,
                                             Verdict, Weights)

@dataclass(frozen=True)
class Feature:
    """A feature of the pipeline: its config and the steps it adds on each side, in chain order."""
    config: type[StepConfig]
    client: Callable[[Any], list[Any]] | None = None      # after local training
    decode: Callable[[Any], list[Any]] | None = None      # per reply, undoing a client encoding (reverse order)
    screen: Callable[[Any], list[Any]] | None = None      # per reply on the server, after every decode
    score: Callable[[Any], list[Any]] | None = None       # per round on the server, over all accepted updates
    transform: Callable[[Any], list[Any]] | None = None   # on the aggregated step
    aggregator: Callable[[Any], Any] | None = None        # the round's aggregator, or None (the last one given wins; default FedAvg)
    review: Callable[[Any], list[Any]] | None = None      # after the round, over all its records (whether it committed or not)


# One line per feature; the order of the lines is the order of the steps on each side.
FEATURES = (
    Feature(AggregateConfig, client=transforms.client_steps),
    Feature(personal.PersonalConfig, client=personal.client_steps),   # keeps the personal model; the update passes as is
    Feature(privacy.DpConfig, client=privacy.client_steps, screen=privacy.screen_steps, transform=privacy.transform_steps),
    Feature(attacks.AttackConfig, client=attacks.client_steps),   # simulation only: a malicious node crafts, then encodes
    Feature(CompressConfig, client=compress.client_steps, decode=compress.screen_steps),
    Feature(DrillConfig, client=drills.client_steps),   # a drilled update is broken as sent
    Feature(secure.SecureConfig, client=secure.client_steps, decode=secure.decode_steps),   # last: the mask ...
    Feature(he.HeConfig, client=he.client_steps, decode=he.decode_steps, transform=he.transform_steps),  # ... or HE
    Feature(CheckConfig, screen=checks.screen_steps),
    Feature(contribution.ContributionConfig, score=contribution.score_steps),
    Feature(robust.RobustConfig, aggregator=robust.aggregator),
    Feature(quarantine.QuarantineConfig, review=quarantine.review_steps),   # acts on the robust rule's flags
    Feature(MomentumConfig, transform=aggregate.transform_steps),
    Feature(cluster.ClusterConfig),   # not a step: k models, each a run of this chain (federated.clusters)
)
# Every config the builders read (the applier's and the gate's fill fixed slots of the chain).
STEP_CONFIGS: tuple[type[StepConfig], ...] = (*(f.config for f in FEATURES), ApplyConfig, RollbackConfig)
States = dict[str, StepState]


def section_defaults() -> dict[str, Any]:
    """The dotted step keys with their defaults (what pyproject.toml declares for `flwr run`)."""
    return {k: v for config in STEP_CONFIGS for k, v in config.defaults().items() if "." in k}


def step_rng(seed: int, server_round: int, node: str, step: str) -> np.random.Generator:
    """A step's own random stream for one node and round: the same run seed gives the same draws."""
    return np.random.default_rng([seed, server_round, zlib.crc32(node.encode()), zlib.crc32(step.encode())])


@dataclass(frozen=True)
class ClientChain:
    steps: tuple[ClientStep, ...]

    def start_weights(self, global_weights: Weights, states: States) -> Weights:
        """The weights local training starts from (a personal head replaces the global one)."""
        weights = dict(global_weights)
        for step in self.steps:
            if hasattr(step, "start_weights"):
                weights = step.start_weights(weights, self._ctx(step, states))  # type: ignore[attr-defined]
        return weights

    def _ctx(self, step: ClientStep, states: States) -> StepContext:
        return StepContext(0, np.random.default_rng(0), states.setdefault(step.name, {}))

    def personal(self) -> "personal.DittoPersonal | None":
        """The step that keeps a personal model to train after the global one (Ditto), if any."""
        return next((s for s in self.steps if isinstance(s, personal.DittoPersonal)), None)

    def personal_start(self, global_weights: Weights, states: States) -> Weights:
        """Where this round's personal training starts (Ditto; call only when `personal()` is set)."""
        ditto = self.personal()
        assert ditto is not None
        return ditto.personal_start(global_weights, self._ctx(ditto, states))

    def keep_personal(self, weights: Weights, states: States) -> None:
        ditto = self.personal()
        assert ditto is not None
        ditto.keep(weights, self._ctx(ditto, states))

    def personal_weights(self, global_weights: Weights, states: States) -> Weights:
        """The model this node evaluates and serves: its own head or BatchNorm layers on the global
        model, or its personal model (Ditto)."""
        weights, ditto = self.start_weights(global_weights, states), self.personal()
        return ditto.personal_weights(weights, self._ctx(ditto, states)) if ditto else weights

    def prepare(self, states: States, server_round: int, lines: int, sample_rate: float,
                steps: int) -> tuple[dict[str, Any], str | None]:
        """Before local training: settings the steps need the trainer to use (DP-SGD's noise and
        clip) and why this node must not train this round (a spent privacy budget), if so."""
        settings: dict[str, Any] = {}
        for step in self.steps:
            if hasattr(step, "prepare"):
                ctx = StepContext(server_round, np.random.default_rng(0), states.setdefault(step.name, {}))
                more, refusal = step.prepare(ctx, lines, sample_rate, steps)  # type: ignore[attr-defined]
                if refusal:
                    return settings, refusal
                settings.update(more)
        return settings, None

    def run(self, update: Update, server_round: int, seed: int, reference: Mapping[str, np.ndarray],
            states: States, task: Mapping[str, Any] | None = None) -> Update:
        """The update after every client step; `reference`: the weights training started from;
        `task`: what the server's task says to the steps."""
        for step in self.steps:
            ctx = StepContext(server_round, step_rng(seed, server_round, update.client, step.name),
                              states.setdefault(step.name, {}), reference, task=task or {})
            update = step(update, ctx)
        return update


@dataclass(frozen=True)
class Candidate:
    """The model a round proposes, the step states that go with it, and what the steps did."""
    weights: Weights
    states: States
    aggregate: Aggregate
    records: list[StepRecord]


@dataclass(frozen=True)
class ServerChain:
    screen: tuple[ScreenStep, ...]
    aggregator: Aggregator
    transforms: tuple[StepTransform, ...]
    applier: Applier
    gate: Gate
    aggregate: str = "all"
    scorers: tuple[RoundScorer, ...] = ()
    secure: secure.SecureConfig = secure.SecureConfig()   # how the round's updates reach the server
    reviewers: tuple[quarantine.Quarantine, ...] = ()

    @property
    def collects_sum(self) -> bool:
        """The server receives only the sum of the updates (secure aggregation), not each one."""
        return self.secure.method != "none"

    def keys(self, weights: Mapping[str, np.ndarray]) -> list[str]:
        """The tensors that travel up and are averaged."""
        return aggregated_keys(weights, self.aggregate)

    def screen_update(self, update: Update, server_round: int, seed: int,
                      reference: Mapping[str, np.ndarray], states: States | None = None) -> Update:
        """Decode, check (and later score) one reply; a rejected update stops at its first failed step.
        `states`: the server's step states (the replay check remembers what each node sent)."""
        for step in self.screen:
            if update.rejected:
                break
            state = {} if states is None else states.setdefault(step.name, {})
            update = step(update, StepContext(server_round, step_rng(seed, server_round, update.client, step.name),
                                              state, reference))
        return update

    def refusal(self, states: States, cohort: Cohort) -> str | None:
        """Why the next round must not run (a privacy budget it would pass), before any training."""
        for step in self.transforms:
            if hasattr(step, "refusal"):
                ctx = StepContext(0, np.random.default_rng(0), copy.deepcopy(states.get(step.name, {})))
                reason = step.refusal(ctx, cohort)  # type: ignore[attr-defined]
                if reason:
                    return reason
        return None

    def proposer(self, weights: Mapping[str, np.ndarray], states: States, server_round: int,
                 seed: int) -> Callable[[Sequence[Update]], Weights]:
        """What a subset of the round's updates would make of w on its own: the configured aggregator
        (FedAvg's example weighting when a robust rule cannot take that few updates), then the applier;
        no transforms (server noise and momentum are nobody's contribution). Step state is copied, so
        nothing a trial does is kept."""
        def propose(subset: Sequence[Update]) -> Weights:
            if not subset:
                return dict(weights)

            def ctx(name: str) -> StepContext:
                return StepContext(server_round, step_rng(seed, server_round, "", name),
                                   copy.deepcopy(states.get(name, {})), {k: weights[k] for k in self.keys(weights)})
            try:
                step = self.aggregator(subset, ctx(self.aggregator.name)).step
            except ValueError:
                step = FedAvg()(subset, ctx("fedavg")).step
            return self.applier(weights, step, ctx(self.applier.name))
        return propose

    def candidate(self, weights: Mapping[str, np.ndarray], updates: Sequence[Update], server_round: int, seed: int,
                  states: States, cohort: Cohort | None = None,
                  evaluate: Callable[[Weights], Mapping[str, float]] | None = None,
                  server_update: Callable[[], Weights] | None = None) -> Candidate:
        """Score, aggregate, transform and apply; the states are copied, so a rolled-back round leaves
        them as they were. `cohort`: the round's available and sampled node counts; `evaluate`: the
        server's validation of candidate weights, which the contribution scorer needs;
        `server_update`: the server's own update on its root lines, which FLTrust needs."""
        new_states = copy.deepcopy(states)
        records: list[StepRecord] = []
        # a secure round's one mean says how many nodes it sums; otherwise each update is one node
        cohort = replace(cohort or Cohort(len(updates), len(updates)),
                         aggregated=(cohort.aggregated if cohort and cohort.aggregated else len(updates)))

        def context(name: str) -> StepContext:
            return StepContext(server_round, step_rng(seed, server_round, "", name), new_states.setdefault(name, {}),
                               {k: weights[k] for k in self.keys(weights)}, cohort=cohort)

        for scorer in self.scorers:
            ctx = context(scorer.name)
            ctx.evaluate = evaluate
            scorer(updates, self.proposer(weights, states, server_round, seed), ctx)
            records += ctx.notes
        ctx = context(self.aggregator.name)
        ctx.server_update = server_update
        aggregate = self.aggregator(updates, ctx)
        records += ctx.notes
        records += [StepRecord(self.aggregator.name, client, {"share": share}) for client, share in aggregate.shares.items()]
        records += [StepRecord(self.aggregator.name, client, {"left_out": why}) for client, why in aggregate.left_out.items()]
        step = aggregate.step
        for transform in self.transforms:
            ctx = context(transform.name)
            step = transform(step, ctx)
            records += ctx.notes
        ctx = context(self.applier.name)
        return Candidate(self.applier(weights, step, ctx), new_states, aggregate, records + ctx.notes)

    def held(self, states: States) -> dict[str, str]:
        """The nodes the server must not sample (quarantined), and why."""
        return {node: why for r in self.reviewers for node, why in r.held(states.get(r.name, {})).items()}

    def review(self, records: Sequence[StepRecord], server_round: int, states: States) -> list[StepRecord]:
        """After the round (committed or not): the reviewers read its records and update their state."""
        return [rec for r in self.reviewers for rec in r.review(records, server_round, states.setdefault(r.name, {}))]

    def readmit(self, node: str, states: States) -> list[StepRecord]:
        """The operator takes `node` back: every reviewer that holds it lets it go."""
        records = (r.readmit(node, states.setdefault(r.name, {})) for r in self.reviewers)
        return [rec for rec in records if rec is not None]

    def decide(self, candidate_cer: float | None, committed_cer: float | None, server_round: int,
               seed: int) -> tuple[Verdict, list[StepRecord]]:
        ctx = StepContext(server_round, step_rng(seed, server_round, "", self.gate.name), {})
        return self.gate(candidate_cer, committed_cer, ctx), ctx.notes


def _steps(rc: Mapping[str, Any], side: str) -> list[Any]:
    steps: list[Any] = []
    for feature in (reversed(FEATURES) if side == "decode" else FEATURES):
        make = getattr(feature, side)
        if make is not None:
            steps += make(feature.config.from_run_config(rc))
    return steps


def build_client_chain(rc: Mapping[str, Any]) -> ClientChain:
    return ClientChain(tuple(_steps(rc, "client")))


def _aggregator(rc: Mapping[str, Any]) -> Aggregator:
    chosen = [f.aggregator(f.config.from_run_config(rc)) for f in FEATURES if f.aggregator is not None]
    return next((a for a in reversed(chosen) if a is not None), FedAvg(CheckConfig.from_run_config(rc).max_examples_ratio))


def _scorers(rc: Mapping[str, Any], screen: Sequence[Any]) -> tuple[RoundScorer, ...]:
    """The round scorers; one that needs individual updates becomes a recorded refusal when a step
    hides them (the chains are built, not run, so this costs nothing)."""
    hider = contribution.hidden_by([*_steps(rc, "client"), *screen])
    reason = f"{hider} hides each node's update from the server" if hider else None
    return tuple(replace(s, disabled=reason) if reason and hasattr(s, "disabled") else s for s in _steps(rc, "score"))


def build_server_chain(rc: Mapping[str, Any]) -> ServerChain:
    screen = _steps(rc, "decode") + _steps(rc, "screen")
    return ServerChain(tuple(screen), _aggregator(rc), tuple(_steps(rc, "transform")),
                       ApplyStep(ApplyConfig.from_run_config(rc)), CommitGate(RollbackConfig.from_run_config(rc)),
                       AggregateConfig.from_run_config(rc).aggregate, _scorers(rc, screen),
                       secure.SecureConfig.from_run_config(rc), tuple(_steps(rc, "review")))


def validate_run_config(rc: Mapping[str, Any]) -> None:
    """Refuse unknown step keys and impossible step settings, naming the key (StepConfigError)."""
    known = section_defaults()
    for key in rc:
        if "." in key and key not in known:
            raise bad(key, f"unknown key (step keys: {', '.join(known)})")
    build_client_chain(rc)
    build_server_chain(rc)
    refuse_combinations(rc)


def refuse_combinations(rc: Mapping[str, Any]) -> None:
    """Features that each work but not together, refused at start with the reason."""
    if personal.PersonalConfig.from_run_config(rc).method != "none" and AggregateConfig.from_run_config(rc).aggregate != "all":
        raise bad("personal.method", "a personal model (Ditto) is a whole model of the node's own; it does not "
                                     "combine with aggregate=backbone or fedbn, which already keep part of the model local")
    dp, rule = privacy.DpConfig.from_run_config(rc), robust.RobustConfig.from_run_config(rc)
    contrib = contribution.ContributionConfig.from_run_config(rc)
    if contrib.method != "off" and contrib.subsets == "in-round" and rule.active:
        # the robust steps look at every update: zeros are votes to a rule, and alike to the collusion check
        raise bad("contribution.subsets", f"in-round coalitions stand in zeros for the nodes outside them, and "
                                          f"robust.rule={rule.rule} (or a robust clip, drop-opposed or "
                                          f"collusion-cosine) would count those zeros as votes: use alone")
    refuse_with_secure_aggregation(rc)
    refuse_with_clusters(rc)
    if quarantine.QuarantineConfig.from_run_config(rc).after and not rule.active:
        raise bad("quarantine.after", "quarantine acts on the robust rule's flags (left out, clipped, opposed): set "
                                      "robust.rule or robust.clip-median, e.g. the recommended trimmed mean")
    if dp.level == "client" and rule.active:
        raise bad("dp.level", f"client-level DP calibrates its noise to an equal-weight sum of updates clipped to "
                              f"dp.clip; robust.rule={rule.rule} (or a robust clip) changes what one node can do to "
                              f"the step, so the accounting would not hold: use dp.level=record with a robust rule")


def refuse_with_secure_aggregation(rc: Mapping[str, Any]) -> None:
    """What cannot run when the server sees only the sum of the updates (each reason names the key)."""
    method = secure.SecureConfig.from_run_config(rc).method
    if he.HeConfig.from_run_config(rc).top_k and method != "ckks":
        raise bad("he.top-k", "sends a shared index set of encrypted entries: it needs secure.method=ckks")
    if method == "none":
        return
    rule, packed = robust.RobustConfig.from_run_config(rc), CompressConfig.from_run_config(rc)
    if rule.active:
        raise bad("robust.rule", f"robust.rule={rule.rule} (or a robust clip, robust.drop-opposed or "
                                 f"robust.collusion-cosine) needs each node's update, and under "
                                 f"secure.method={method} the server sees only their sum")
    if quarantine.QuarantineConfig.from_run_config(rc).after:
        raise bad("quarantine.after", f"quarantine acts on per-node flags, and under secure.method={method} the "
                                      f"server sees only the sum of the updates")
    if packed.top_k or packed.quantize != "none":
        raise bad("compress.top-k", f"secure.method={method} masks or encrypts the dense update (SecAgg+ quantises "
                                    f"it itself): compress.top-k and compress.quantize must be off; with HE, "
                                    f"he.top-k sends a shared index set instead")
    if AggregateConfig.from_run_config(rc).aggregate != "all":
        raise bad("aggregate", "under secure aggregation every node must send the same tensors, so the masks "
                               "cancel and the ciphertexts add: aggregate=backbone or fedbn keep different parts local")



def refuse_with_clusters(rc: Mapping[str, Any]) -> None:
    """What cannot run with k cluster models, each with its reason: the server must see each
    node's update and which model it trained, server state must not belong to one model, and
    the whole model must be shared."""
    if not cluster.ClusterConfig.from_run_config(rc).active:
        return
    packed = CompressConfig.from_run_config(rc)
    why = {
        "secure.method": (secure.SecureConfig.from_run_config(rc).method != "none",
                          "the server sees only the sum of the updates, not which cluster each trained"),
        "dp.level": (privacy.DpConfig.from_run_config(rc).level == "client",
                     "client-level DP accounts one noised step per round, and a clustered round takes k"),
        "server-momentum": (bool(MomentumConfig.from_run_config(rc).momentum),
                            "FedAvgM's velocity belongs to one model"),
        "contribution.method": (contribution.ContributionConfig.from_run_config(rc).method != "off",
                                "contributions are scored against one model's validation"),
        "personal.method": (personal.PersonalConfig.from_run_config(rc).method != "none",
                            "Ditto pulls a personal model towards one global model"),
        "aggregate": (AggregateConfig.from_run_config(rc).aggregate != "all",
                      "a part of the model kept on the node does not follow it from cluster to cluster"),
        "robust.rule": (robust.RobustConfig.from_run_config(rc).rule == "trust",
                        "FLTrust's root update is trained from one model"),
        "compress.error-feedback": (packed.top_k > 0 and packed.error_feedback,
                                    "a node's Top-K residual would carry one cluster's update into "
                                    "another's when the node moves: set compress.error-feedback=false"),
    }
    for key, (clash, reason) in why.items():
        if clash:
            raise bad(key, f"does not combine with cluster.method=ifca: {reason}")


def describe(rc: Mapping[str, Any]) -> str:
    """The two chains, in order, with each step's settings (`fedocr fl steps`)."""
    client, server = build_client_chain(rc), build_server_chain(rc)
    lines = ["client (after local training):"]
    lines += [f"  {i}. {s.name:<11} {s.describe()}" for i, s in enumerate(client.steps, 1)] or ["  (none: the delta as trained)"]
    lines.append("server:")
    steps: list[Any] = [*server.screen, *server.scorers, server.aggregator, *server.transforms, server.applier]
    lines += [f"  {i}. {s.name:<11} {s.describe()}" for i, s in enumerate(steps, 1)]
    lines.append(f"  {len(steps) + 1}. {'validate':<11} CER and CTC loss of the candidate on the server's validation lines")
    lines.append(f"  {len(steps) + 2}. {server.gate.name:<11} {server.gate.describe()}")
    lines += [f"  {len(steps) + 3 + i}. {r.name:<11} {r.describe()}" for i, r in enumerate(server.reviewers)]
    clustering = cluster.ClusterConfig.from_run_config(rc)
    if clustering.active:
        lines.append(f"clustered: {clustering.describe()}; the server runs the steps above on each cluster's "
                     f"updates against that cluster's model")
    return "\n".join(lines)
