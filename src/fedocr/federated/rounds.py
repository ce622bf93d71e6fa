"""The server's round loop: sample, send, collect until the deadline, run the server chain,
validate, commit or roll back, checkpoint and record. Flower-agnostic except for the `Grid` it
talks through (messages are built and read by `protocol`), so the same loop runs under the
simulation engine and the deployment engine.

Per round (docs/ARCHITECTURE.md, the update chain, server side): screen each reply (decode -> check)
-> aggregate the accepted updates (FedAvg, McMahan et al. 2017) -> transform the step (FedAvgM)
(before aggregating, each node's contribution is scored on validation lines when the run asks)
-> apply to w, but only when at least `min-accepted` updates passed (the participation
threshold) -> validate the candidate on the public set -> the gate commits it or rolls the
round back -> save the round's model atomically, export the best -> write the round and every
step's record to the run store -> checkpoint the server state (steps' state included), so a
restarted server resumes after the last completed round.
"""
from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
from flwr.serverapp import Grid

from fedocr.charset import Charset
from fedocr.data import LineDataset
from fedocr.federated.config import ConfigError, FlConfig
from fedocr.federated.identity import STEP as IDENTITY, Registry
from fedocr.data.organisations import get_federation, public_lines
from fedocr.federated import clusters
from fedocr.federated.pipeline.build import Candidate, ServerChain, build_server_chain
from fedocr.federated.pipeline.cluster import STEP as CLUSTER, ClusterConfig
from fedocr.federated.pipeline.checks import tensor_digest
from fedocr.federated.pipeline.contribution import ContributionConfig, cumulate
from fedocr.federated.pipeline.transforms import select
from fedocr.federated.pipeline import he
from fedocr.federated.pipeline.quarantine import STEP as QUARANTINE
from fedocr.federated.pipeline.robust import RobustConfig
from fedocr.federated.pipeline.secure import MIN_NODES
from fedocr.federated.pipeline.types import SERVER, Cohort, StepRecord, Update, Verdict, Weights
from fedocr.federated.protocol import (EVALUATE, QUERY, TRAIN, Received, evaluate_content, query_content,
                                      read_evaluate_reply, read_query_reply, read_reply, read_secure_reply,
                                      secure_fit_ins, secure_sum, to_nodes, train_content, wire_bytes)
from fedocr.federated.runs.report import build_report, write_json
from fedocr.federated.root_update import RootTrainer
from fedocr.federated.state import ServerState
from fedocr.federated.runs.store import ClientRecord, RoundRecord, RunStore
from fedocr.federated.runs.timing import union_seconds
from fedocr.federated.validate import (ValidationProbe, server_validates, server_validation, validate,
                                      validation_lines, validation_source)
from fedocr.federated.vocab import initial_model
from fedocr.federated.weights import load_weights, model_weights
from fedocr.model import CRNN, save_checkpoint
from fedocr.model.checkpoint import provenance
from fedocr.model.signature import check_signing_key, sign_file

log = logging.getLogger("fedocr.federated")
Printer = Callable[[str], None]


class NotEnoughNodes(RuntimeError):
    """Fewer nodes connected than the participation threshold, for longer than allowed."""


class RunRefused(ConfigError):
    """A run config that the nodes that answered show cannot run (recorded as failed, no traceback)."""


class NoRoundApplied(RuntimeError):
    """Every round ended below the threshold or rolled back: the run's model is the one it started from."""


SECURE_SUM = "secure-sum"   # the name the round's unmasked mean is screened and recorded under
MAX_NAME = 64   # a client's self-reported name is shown and stored; keep it short


def name_list(names: Sequence[str], shown: int = 12) -> str:
    """A readable list of node names: a federation of a thousand is summarised, not printed whole."""
    if len(names) <= shown:
        return ", ".join(names)
    return f"{len(names)} nodes: {', '.join(names[:shown])}, ... ({len(names) - shown} more)"


def sample_clients(node_ids: Sequence[int], k: int, rng: np.random.Generator) -> list[int]:
    """k distinct node ids drawn uniformly (sorted input so a seed gives the same draw). Positions
    are drawn, not ids: node ids are unsigned 64-bit, and NumPy turns a list mixing ids above and
    below 2**63 into float64, which rounds them to ids no node has."""
    ordered = sorted(node_ids)
    if k >= len(ordered):
        return ordered
    return sorted(ordered[int(i)] for i in rng.choice(len(ordered), size=k, replace=False))


def unique_name(name: str, node_id: str, taken: set[str]) -> str:
    """`name`, or `name#<node id>` when another node of the round already uses it: names come from
    the clients, and two nodes with one name must not share (or overwrite) a store row."""
    name = name[:MAX_NAME] or f"node-{node_id}"
    candidate, n = name, 1
    while candidate in taken:
        candidate = f"{name}#{node_id}" if n == 1 else f"{name}#{node_id}-{n}"
        n += 1
    taken.add(candidate)
    return candidate


def screen(received: Received, chain: ServerChain, reference: Weights, server_round: int, seed: int,
           states: dict | None = None, refused: str | None = None) -> Received:
    """Run the chain's screening steps on one reply; the record says accepted, or why not.
    `refused`: why the update is rejected before any step (it names a cluster the run lacks)."""
    update, rec = received.update, received.record
    if update is None:
        return received
    update = (update.reject(CLUSTER, refused) if refused
              else chain.screen_update(update, server_round, seed, reference, states))
    norms = [r.info["norm"] for r in update.records if r.step == "check" and "norm" in r.info]
    rec.update_norm = norms[-1] if norms else None
    rec.accepted, rec.reason = update.rejected is None, update.rejected
    received.update = update
    return received


def median_steps(updates: Sequence[Update]) -> int | None:
    """The median local steps the round's clients report (None when none does)."""
    steps = [u.metrics["train-steps"] for u in updates if u.metrics.get("train-steps")]
    return max(1, round(float(np.median(steps)))) if steps else None


@dataclass(frozen=True)
class Proposal:
    """A round's candidate for one model, its validation and the gate's verdict."""
    candidate: Candidate
    verdict: Verdict
    cer: float | None
    loss: float | None
    note: str | None
    records: list[StepRecord]


@dataclass
class Collected:
    """A round's replies as the server got them: a record per sampled node, the updates to aggregate
    (under secure aggregation: their one unmasked mean), how many nodes they stand for, the
    screening steps' records, the cohort and the collection's wall-clock interval."""
    received: list[Received]
    updates: list[Update]
    accepted: int
    steps: list[StepRecord]
    cohort: Cohort
    t0: float
    t1: float


class FederatedServer:
    """One federated run: its config, chain, global model, validation set, store and output folder."""

    def __init__(self, cfg: FlConfig, flower_run_id: int | None = None, printer: Printer = print) -> None:
        self.cfg, self.print = cfg, printer
        self.chain = build_server_chain(cfg.to_run_config())
        self.clustering = ClusterConfig.from_run_config(cfg.steps)
        self.out = cfg.out_path()
        self.out.mkdir(parents=True, exist_ok=True)
        model, charset, self.init_desc = initial_model(cfg)
        self.model: CRNN = model
        self.charset: Charset = charset
        state = ServerState.load(self.out)
        self.resumed = state is not None and state.round > 0
        if state is not None and self.resumed:
            if state.charset_version != charset.version:
                raise RuntimeError(f"{self.out}: holds a run on charset {state.charset_version}, this config uses "
                                   f"{charset.version}; use another out-dir")
            if state.val_source and state.val_source != validation_source(cfg):
                raise RuntimeError(f"{self.out}: holds a run validated on {state.val_source}, this config validates "
                                   f"on {validation_source(cfg)}; use another out-dir")
            self.state = state
        else:
            # A fresh state is saved before round 1, so a server stopped before its first commit restarts
            # under the same run id (the store keeps one run, not an orphan "running" row beside a new
            # one) - if it starts from the same model: the nodes keep their step state under that id.
            weights = model_weights(model)
            same_start = (state is not None and state.charset_version == charset.version
                          and tensor_digest(state.weights) == tensor_digest(weights))
            self.state = ServerState.fresh(weights, charset.version,
                                           run_id=state.run_id if state is not None and same_start else None)
            self.state.val_source = validation_source(cfg)
            self.state.save(self.out)
        self.simulated = False   # all nodes are virtual SuperNodes of synthetic organisations (set by introduce)
        self.impostors: dict[str, str] = {}   # node id -> why it takes no part (it claims another's name)
        self._written_clusters: dict[int, Weights] = {}   # the cluster models last written to cluster-N.pt
        self.keys = self.chain.keys(self.state.weights)
        # HE: the settings and the server's public-only CKKS context (it cannot decrypt); None otherwise.
        self.he: tuple[he.HeConfig, object] | None = None
        if self.chain.secure.method == "ckks":
            config = he.HeConfig.from_run_config(cfg.to_run_config())
            self.he = (config, he.load_context(config.folder / he.PUBLIC, need_secret=False))
        if cfg.sign_key:   # an unusable key must stop the run before it trains, not after
            check_signing_key(Path(cfg.sign_key))
        self.store = RunStore(cfg.store_path())
        self.store.start_run(self.state.run_id, cfg.run_name or self.out.name,
                             # lr_resolved: the peak local rate; each round records the rate it sent
                             # initial_model_digest: what the privacy audit's calibrated attacks subtract must be it
                             {**cfg.to_dict(), "initial_model_resolved": self.init_desc,
                              "initial_model_digest": tensor_digest(model_weights(model)), "lr_resolved": cfg.local_lr(),
                              "model_resolved": self.model.config.to_dict(), "vocabulary_resolved": cfg.vocabulary(),
                              "charset_version": charset.version}, cfg.federation, str(self.out), flower_run_id)
        try:
            self.val: LineDataset = validation_lines(cfg, charset)
            # The contribution scorer evaluates a candidate per subset of nodes: on its own (smaller) slice
            # of the validation lines, prepared once. None where the server validates nothing.
            contrib = ContributionConfig.from_run_config(cfg.steps)
            self.probe = (ValidationProbe(self.model, charset, self.val, contrib.lines)
                          if contrib.method != "off" and server_validates(cfg.aggregate) else None)
            robust = RobustConfig.from_run_config(cfg.to_run_config())
            self.root = (RootTrainer(cfg, self.model, charset, public_lines(cfg.federation, robust.root_lines, cfg.seed,
                                                                            charset.version, charset, split="root"))
                         if robust.rule == "trust" else None)
        except BaseException as exc:
            self.store.finish_run(self.state.run_id, "failed", error=f"validation set: {type(exc).__name__}: {exc}")
            raise

    # -- one round -------------------------------------------------------------------------
    def _nodes(self, grid: Grid) -> list[int]:
        deadline = time.time() + self.cfg.wait_for_nodes_s
        last_note = 0.0
        while True:
            nodes = list(grid.get_node_ids())
            if len(nodes) >= self.cfg.min_accepted:
                return nodes
            if time.time() > deadline:
                raise NotEnoughNodes(f"only {len(nodes)} node(s) connected after {self.cfg.wait_for_nodes_s:.0f} s; "
                                     f"the participation threshold is {self.cfg.min_accepted}")
            if time.time() - last_note > 10:
                self.print(f"waiting for nodes: {len(nodes)}/{self.cfg.min_accepted} connected")
                last_note = time.time()
            time.sleep(1.0)

    def _samplable(self, nodes: list[int], rnd: int) -> tuple[list[int], list[StepRecord]]:
        """The connected nodes the round may sample: the operator's re-admissions first, then
        without the quarantined ones; the records say who came back and who was left out."""
        state, notes = self.state, []
        for name in self.store.pending_readmissions(state.run_id):
            notes += self.chain.readmit(name, state.steps)
            self.store.readmitted(state.run_id, name, rnd)
        held = self.chain.held(state.steps)
        kept = [n for n in nodes if state.names.get(str(n)) not in held and str(n) not in self.impostors]
        if any(state.names.get(str(n)) in held for n in nodes):
            notes.append(StepRecord(QUARANTINE, SERVER, {"excluded": sorted(set(held) & set(state.names.values()))}))
        refused = {state.names.get(str(n), f"node-{n}"): self.impostors[str(n)] for n in nodes if str(n) in self.impostors}
        if refused:
            notes.append(StepRecord(IDENTITY, SERVER, {"refused": refused}))
        return kept, notes

    def _collect(self, grid: Grid, rnd: int, lr: float) -> Collected:
        """Send the round's task to the sampled nodes; every sampled node gets a record."""
        nodes, notes = self._samplable(self._nodes(grid), rnd)
        got = self._collect_from(grid, rnd, lr, nodes)
        got.steps[:0] = notes
        return got

    def _collect_from(self, grid: Grid, rnd: int, lr: float, nodes: list[int]) -> Collected:
        cfg, state = self.cfg, self.state
        k = cfg.clients_per_round(len(nodes))
        if self.chain.collects_sum:   # a secure sum of fewer than 3 would give each node the other's update
            k = max(k, min(MIN_NODES, len(nodes)))
        sampled = sample_clients(nodes, k, np.random.default_rng([cfg.seed, rnd]))
        cohort = Cohort(len(nodes), len(sampled))
        if self.chain.collects_sum and len(sampled) < MIN_NODES:
            note = f"secure aggregation needs at least {MIN_NODES} sampled nodes, {len(sampled)} sampled"
            received = [Received(ClientRecord(state.names.get(str(n), f"node-{n}"), str(n), False, note), None)
                        for n in sampled]
            return Collected(received, [], 0, [], cohort, time.time(), time.time())
        if self.chain.secure.method == "secagg+":
            return self._collect_secagg(grid, rnd, lr, sampled, cohort)
        reference = select(state.weights, self.keys)
        index = he.task_index(self.he[0], state.steps.get(he.INDEX_STEP, {}), reference,
                              cfg.seed) if self.he and self.he[0].top_k else None
        # All tensors travel down (a new node needs the head too); a clustered run sends its k models.
        first, others = clusters.sent(state)
        content = train_content(first, self.model.config, rnd, self.charset.version, lr, state.run_id,
                                {he.INDEX: index} if index is not None else None, len(sampled), others)
        bytes_down = wire_bytes(content)
        messages = to_nodes(content, sampled, TRAIN, cfg.round_deadline_s + 30, group=str(rnd))
        t0 = time.time()
        replies = list(grid.send_and_receive(messages, timeout=cfg.round_deadline_s))
        t1 = time.time()
        received: list[Received] = []
        taken: set[str] = set()
        registry = Registry.of(grid)
        for reply in replies:
            node = str(reply.metadata.src_node_id)
            got = read_reply(reply, state.names.get(node, f"node-{node}"), self.charset.version, bytes_down,
                             (rnd, str(content["config"]["global-digest"])), registry)
            got.record.client = unique_name(got.record.client, node, taken)
            if got.update is not None:
                got.update = got.update.renamed(got.record.client)
            state.names[node] = got.record.client
            if self.he:
                received.append(got)
                continue
            base, refused = clusters.trained_from(state, got.update) if got.update else (state.weights, None)
            received.append(screen(got, self.chain, select(base, self.keys), rnd, cfg.seed, state.steps, refused))
        self._dropped(received, sampled, {str(r.metadata.src_node_id) for r in replies}, taken, bytes_down)
        if self.he:
            return self._he_mean(grid, rnd, received, reference, index, cohort, t0, t1)
        accepted = [r.update for r in received if r.update is not None and r.update.rejected is None]
        steps = [s for r in received if r.update is not None for s in r.update.records]
        return Collected(received, accepted, len(accepted), steps, cohort, t0, t1)

    def _dropped(self, received: list[Received], sampled: Sequence[int], seen: set[str], taken: set[str],
                 bytes_down: int) -> None:
        """A record for each sampled node that did not answer."""
        for node in (str(n) for n in sampled if str(n) not in seen):
            name = unique_name(self.state.names.get(node, f"node-{node}"), node, taken)
            received.append(Received(ClientRecord(name, node, False, f"dropped: no reply within the "
                                                  f"{self.cfg.round_deadline_s:g} s deadline (straggler, crash or "
                                                  f"disconnect)", bytes_down=bytes_down), None))

    def _collect_secagg(self, grid: Grid, rnd: int, lr: float, sampled: list[int], cohort: Cohort) -> Collected:
        """Flower's SecAgg+ gives the weighted mean of the sampled nodes' updates; each node's
        claimed examples and metrics are read in the clear, its update never."""
        from fedocr.federated.secagg import secure_round   # Flower's legacy workflow: only for secure runs

        cfg, state = self.cfg, self.state
        task = secure_fit_ins(state.weights, self.keys, self.model.config, rnd, self.charset.version, lr, state.run_id,
                              len(sampled))
        t0 = time.time()
        result = secure_round(grid, sampled, task, rnd, self.chain.secure, cfg.round_deadline_s)
        t1 = time.time()
        received, taken, registry = [], set(), Registry.of(grid)
        for node_id, fitres in result.results:
            node = str(node_id)
            got = read_secure_reply(node_id, fitres, state.names.get(node, f"node-{node}"), self.charset.version,
                                    registry)
            got.record.client = unique_name(got.record.client, node, taken)
            got.record.bytes_up, got.record.bytes_down = result.bytes_up[node_id], result.bytes_down[node_id]
            state.names[node] = got.record.client
            received.append(got)
        self._dropped(received, sampled, {str(n) for n, _ in result.results}, taken, 0)
        for r in received:
            if r.record.reason and r.record.reason.startswith("dropped"):
                r.record.bytes_down = result.bytes_down[int(r.record.node_id)]
        summed = self._summable(received)
        if not result.completed:
            return self._sum_collected(rnd, received, summed, None, "SecAgg+ halted: fewer live nodes than its "
                                       "reconstruction threshold; nothing was unmasked", cohort, t0, t1)
        mean = secure_sum(result.results[0][1], self.keys, state.weights) if summed else None
        return self._sum_collected(rnd, received, summed, mean, None, cohort, t0, t1)

    def _he_mean(self, grid: Grid, rnd: int, received: list[Received], reference: Weights,
                 index: np.ndarray | None, cohort: Cohort, t0: float, t1: float) -> Collected:
        """HE: add the replies' ciphertexts, have one node decrypt the sum, divide by the examples."""
        from fedocr.federated.he_round import expected_ciphertexts, he_mean, screen_ciphertexts

        assert self.he is not None
        config, public = self.he
        screen_ciphertexts(received, public, expected_ciphertexts(config, reference))
        summed = self._summable(received)
        if not summed:
            return self._sum_collected(rnd, received, summed, None, None, cohort, t0, t1)
        result = he_mean(grid, summed, config, public, reference, index, self.cfg.round_deadline_s)
        for r in summed:
            if r.record.client == result.decrypted_by:
                r.record.bytes_down += result.bytes_down
                r.record.bytes_up += result.bytes_up
        return self._sum_collected(rnd, received, summed, result.mean, result.why_not, cohort, t0, time.time())

    @staticmethod
    def _summable(received: list[Received]) -> list[Received]:
        """The replies inside the round's sum: no refusal, a positive example count."""
        return [r for r in received if r.record.reason is None and r.record.examples > 0]

    def _sum_collected(self, rnd: int, received: list[Received], summed: list[Received], mean: Weights | None,
                       why_not: str | None, cohort: Cohort, t0: float, t1: float) -> Collected:
        """Screen the round's mean (the server's only view of the updates) as one update; the summed
        nodes are accepted with it, or rejected with its reason."""
        steps = [s for r in received if r.update is not None for s in r.update.records]
        for r in received:
            r.update = None   # a node's records are kept above; its update was never the server's to hold
        if why_not:
            for r in received:
                if r.record.reason is None or r.record.reason.startswith("dropped"):
                    r.record.reason = f"{r.record.reason + '; ' if r.record.reason else ''}{why_not}"
        if mean is None or not summed:
            return Collected(received, [], 0, steps, cohort, t0, t1)
        aggregate = Update(SECURE_SUM, mean, max(r.record.examples for r in summed))  # the bound is per claim
        aggregate = self.chain.screen_update(aggregate, rnd, self.cfg.seed, select(self.state.weights, self.keys),
                                             self.state.steps)
        steps += aggregate.records
        for r in summed:
            r.record.accepted = aggregate.rejected is None
            r.record.reason = f"the secure sum was rejected: {aggregate.rejected}" if aggregate.rejected else None
        ok = aggregate.rejected is None
        # the one mean stands for the summed nodes (distributed DP noise is accounted by their number)
        return Collected(received, [aggregate] if ok else [], len(summed) if ok else 0, steps,
                         replace(cohort, aggregated=len(summed)), t0, t1)

    def run_round(self, grid: Grid, rnd: int) -> RoundRecord:
        cfg, state = self.cfg, self.state
        lr = cfg.round_lr(rnd)  # sent to the clients and recorded with the round: one value for both
        got = self._collect(grid, rnd, lr)
        received, cohort, t0, t1, steps = got.received, got.cohort, got.t0, got.t1, list(got.steps)
        applied = got.accepted >= cfg.min_accepted
        note = None
        v0 = time.time()
        val_cer, val_loss = state.committed_cer, state.committed_loss
        grouping = (clusters.group(state, self.clustering, got.updates, rnd, cfg.min_accepted, cohort.available)
                    if applied else None)
        if grouping is not None and grouping.postponed:   # the round trains the one model
            steps += grouping.records
            self.print(f"round {rnd}: {grouping.postponed}")
            grouping = None
        if grouping is not None:
            applied, note, more = self._apply_clusters(grouping, received, rnd, lr, cohort)
            steps += more
            val_cer, val_loss = state.committed_cer, state.committed_loss
        elif applied:
            proposal = self._propose(state.weights, state.committed_cer, got.updates, received, rnd, lr, cohort)
            steps += proposal.records
            if proposal.verdict.commit:
                state.weights, state.steps = proposal.candidate.weights, proposal.candidate.states
                state.committed_cer, state.committed_loss = val_cer, val_loss = proposal.cer, proposal.loss
                note = proposal.note
            else:  # the next round starts from the committed model, with the committed steps' state
                applied, note = False, proposal.verdict.reason
                load_weights(self.model, state.weights)
                self.print(f"round {rnd}: {note}")
        else:
            note = f"not applied: {got.accepted} accepted update(s) < threshold {cfg.min_accepted}"
            self.print(f"round {rnd}: {note}")
        val_seconds = time.time() - v0
        if rnd == cfg.num_rounds or (cfg.eval_every and rnd % cfg.eval_every == 0):
            steps += self.federated_evaluation(grid, rnd)
        steps += self.chain.review(steps, rnd, state.steps)   # committed or not: a suspect stays a suspect
        busy = [r.busy for r in received if r.busy is not None and r.training is not None]
        training = [r.training for r in received if r.busy is not None and r.training is not None]
        train_s, busy_s = union_seconds(training, t0, t1), union_seconds(busy, t0, t1)  # type: ignore[arg-type]
        return RoundRecord(round=rnd, seconds=t1 - t0, sampled=cohort.sampled, accepted=got.accepted, applied=applied,
                           lr=lr, train_seconds=train_s, overhead_seconds=max(0.0, (t1 - t0) - busy_s),
                           val_seconds=val_seconds, val_cer=val_cer, val_loss=val_loss, note=note,
                           clients=sorted((r.record for r in received), key=lambda c: c.client), steps=steps)

    def _propose(self, weights: Weights, committed_cer: float | None, updates: list[Update], received: list[Received],
                 rnd: int, lr: float, cohort: Cohort) -> Proposal:
        """Aggregate `updates` into a candidate from `weights`, validate it and ask the gate."""
        cfg, root, local_steps = self.cfg, self.root, median_steps(updates)
        candidate = self.chain.candidate(
            weights, updates, rnd, cfg.seed, self.state.steps, cohort, self.probe,
            (lambda: root.update(weights, self.keys, lr, rnd, local_steps)) if root else None)
        for r in received:  # an aggregator may leave clients out once it has seen every update
            if r.record.client in candidate.aggregate.left_out:
                r.record.accepted, r.record.reason = False, candidate.aggregate.left_out[r.record.client]
        load_weights(self.model, candidate.weights)
        cer, loss, val_note = server_validation(self.model, self.charset, self.val, cfg.aggregate)
        verdict, gate_records = self.chain.decide(cer, committed_cer, rnd, cfg.seed)
        return Proposal(candidate, verdict, cer, loss, val_note, candidate.records + gate_records)

    def _apply_clusters(self, grouping: clusters.Grouping, received: list[Received], rnd: int, lr: float,
                        cohort: Cohort) -> tuple[bool, str | None, list[StepRecord]]:
        """The server chain once per cluster: a cluster's model changes when at least `min-accepted`
        of its nodes' updates passed and the gate commits. At the split every group must commit,
        or the split waits (a cluster seeded with the shared model would never be picked).
        (applied, note, records)."""
        committed: dict[int, clusters.ClusterModel] = {}
        notes: list[str] = []
        steps: list[StepRecord] = []
        for c, updates in sorted(grouping.groups.items()):
            base, members = grouping.bases[c], sorted(u.client for u in updates)
            if len(updates) < self.cfg.min_accepted:
                notes.append(f"cluster {c}: {len(updates)} accepted update(s) < threshold {self.cfg.min_accepted}")
                continue
            proposal = self._propose(base.weights, base.cer, updates, received, rnd, lr, cohort)
            steps += proposal.records
            steps.append(StepRecord(CLUSTER, SERVER, {"cluster": c, "members": members, "val_cer": proposal.cer,
                                                      "committed": proposal.verdict.commit}))
            if proposal.verdict.commit:
                committed[c] = clusters.ClusterModel(proposal.candidate.weights, proposal.cer, proposal.loss)
                self.state.steps = proposal.candidate.states
            else:
                notes.append(f"cluster {c}: {proposal.verdict.reason}")
        grouped = list(grouping.records)
        if grouping.splits and len(committed) < len(grouping.groups):
            why = "split postponed: not every group's model committed; the run keeps its one model"
            notes.append(why)
            grouped, committed = clusters.unsplit(grouping.records, why), {}
        elif committed:
            clusters.keep(self.state, committed)
        steps = grouped + steps
        load_weights(self.model, self.state.weights)
        note = "; ".join(notes) or None
        if note:
            self.print(f"round {rnd}: {note}")
        return bool(committed), note, steps

    def _write_model(self, path: Path, prov: dict) -> None:
        """A checkpoint of the current model, signed when the run has a signing key."""
        save_checkpoint(path, self.model, self.charset, prov)
        self._sign(path)

    def _sign(self, path: Path) -> None:
        if self.cfg.sign_key:
            sign_file(path, Path(self.cfg.sign_key))

    def _save_round(self, record: RoundRecord) -> None:
        """Round model, best model, store row, then the state: in that order, so a kill at any
        point leaves either the previous round's state or this round's, never a mix."""
        rnd, state = record.round, self.state
        prov = provenance(kind="federated", run_id=state.run_id, round=rnd, federation=self.cfg.federation,
                          seed=self.cfg.seed, initial_model=self.init_desc, aggregate=self.cfg.aggregate)
        self._write_model(self.out / f"round-{rnd}.pt", prov)
        for c, cluster in enumerate(clusters.models(state)):   # each cluster's latest committed model ...
            if self._written_clusters.get(c) is not cluster.weights:   # ... when it changed (or since a restart)
                load_weights(self.model, cluster.weights)
                self._write_model(self.out / f"cluster-{c}.pt", {**prov, "cluster": c})
                self._written_clusters[c] = cluster.weights
        load_weights(self.model, state.weights)
        if record.val_cer is None:  # no meaningful server-side score (backbone mode): the latest round
            state.best_round = rnd
            self._write_model(self.out / "model.pt", {**prov, "latest_of_rounds": rnd})
        elif state.best_cer is None or record.val_cer < state.best_cer:
            state.best_cer, state.best_round = record.val_cer, rnd
            self._write_model(self.out / "model.pt", {**prov, "best_of_rounds": rnd})
        self.store.record_round(state.run_id, record)
        state.round = rnd
        state.save(self.out)

    def introduce(self, grid: Grid) -> None:
        """Ask every connected node its name and vocabulary before round 1, so a node that later
        drops is recorded by name, and a vocabulary mismatch is reported before any training. In
        simulation, refuse a federation whose organisations do not each have a SuperNode (`flwr
        run` simulates 2 unless told otherwise, which would silently leave one out)."""
        nodes = self._nodes(grid)
        # Not bound by a short round deadline: a simulation's first contact waits for its actors to start.
        messages = to_nodes(query_content(self.charset.version), nodes, QUERY, max(120.0, self.cfg.round_deadline_s))
        taken: set[str] = set()
        answers = []
        registry = Registry.of(grid)
        for reply in grid.send_and_receive(messages, timeout=max(60.0, self.cfg.round_deadline_s)):
            answer = read_query_reply(reply)
            if answer is None:
                continue
            answers.append(answer)
            node = str(reply.metadata.src_node_id)
            claimed, impostor = registry.identify(answer.client or f"node-{node}", node)
            name = unique_name(claimed, node, taken)
            self.state.names[node] = name
            if impostor:
                self.impostors[node] = impostor
                self.print(f"node {name}: {impostor}; it takes no part in this run")
            if answer.charset_version != self.charset.version:
                self.print(f"node {name}: charset {answer.charset_version} differs from the "
                           f"server's {self.charset.version}; its updates will be refused")
        self.simulated = bool(answers) and all(a.simulated for a in answers)
        orgs = get_federation(self.cfg.federation).names
        if self.simulated and (len(nodes) != len(orgs) or sorted(a.client for a in answers) != sorted(orgs)):
            raise NotEnoughNodes(f"federation {self.cfg.federation} has {len(orgs)} nodes "
                                 f"({', '.join(orgs)}) but {len(nodes)} simulated SuperNode(s) connected "
                                 f"({', '.join(sorted(a.client for a in answers)) or 'none answered'}); with `flwr run` "
                                 f"pass --federation-config num-supernodes={len(orgs)}")
        self.print(f"nodes: {name_list(sorted(self.state.names.values())) or 'none answered'}")
        if self.cfg.val_data == "members" and answers and not self.simulated:
            raise RunRefused("run config val-data: members is the simulated organisations' lines, which a "
                              "deployment's server does not have: use public or an absolute path to agreed lines")

    def federated_evaluation(self, grid: Grid, rnd: int) -> list[StepRecord]:
        """Every connected node scores the committed model on its own held-out lines (docs/ARCHITECTURE.md:
        the server has none of them) and answers with scores only; at the last round a node also
        scores its local-only model when the run config asks for it."""
        cfg, state = self.cfg, self.state
        first, others = clusters.sent(state)
        content = evaluate_content(first, self.model.config, rnd, self.charset.version, state.run_id,
                                   cfg.eval_local_baseline and rnd == cfg.num_rounds, others)
        nodes = list(grid.get_node_ids())
        messages = to_nodes(content, nodes, EVALUATE, cfg.round_deadline_s + 30, group=f"eval-{rnd}")
        records = []
        for reply in grid.send_and_receive(messages, timeout=cfg.round_deadline_s):
            node = str(reply.metadata.src_node_id)
            answer = read_evaluate_reply(reply)
            name = state.names.get(node, f"node-{node}")
            if answer is None:
                records.append(StepRecord("evaluate", name, {"failed": True}))
                continue
            records.append(StepRecord("evaluate", name, answer[1]))
            self.print(f"    {name}: held-out CER {answer[1]['cer']:.4f} on {answer[1].get('lines', 0):.0f} lines")
        return records

    def final_phase(self, membership: dict[str, int]) -> dict | None:
        """After the last round. In simulation: the local-only and centralized baselines and the
        per-organisation table, on the last round's model (the same training compute). In a
        deployment the table is the nodes' own federated evaluation of the last round. `membership`:
        a clustered run's node -> cluster (the simulated table scores each node's cluster model)."""
        if self.simulated and self.cfg.baselines:
            from fedocr.federated.sim.baselines import final_evaluation

            return final_evaluation(self.cfg, self.out / f"round-{self.state.round}.pt", self.print,
                                    {node: self.out / f"cluster-{c}.pt" for node, c in membership.items()})
        rounds = self.store.rounds(self.state.run_id)
        evals = [s for s in (rounds[-1].steps if rounds else []) if s.step == "evaluate" and "cer" in s.info]
        if not evals:
            return None
        clients = {s.client: {"own_test_cer": {"federated": s.info["cer"],
                                               **({"local_only": s.info["local_only_cer"]}
                                                  if "local_only_cer" in s.info else {})},
                              "own_test_lines": s.info.get("lines")} for s in evals}
        return {"clients": clients, "source": "federated evaluation: each node's held-out lines, last round"}

    def cluster_membership(self) -> dict[str, int]:
        """Each node's latest cluster in a clustered run (empty before the split or without clustering)."""
        if not self.state.clusters:
            return {}
        return clusters.membership([s for r in self.store.rounds(self.state.run_id) for s in r.steps],
                                   len(self.state.clusters))

    def contribution_summary(self) -> dict | None:
        """Each node's contribution summed over the applied rounds (a rolled-back round changed nothing)."""
        rounds = self.store.rounds(self.state.run_id)
        return cumulate(s for r in rounds if r.applied for s in r.steps)

    def publish(self) -> None:
        """model.onnx next to the best model.pt, verified against PyTorch (a failed export is a
        one-line warning: `fedocr export` can retry it, and the run loses nothing)."""
        from fedocr.export import export_onnx

        model_pt = self.out / "model.pt"
        if not model_pt.is_file():
            return
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                export_onnx(model_pt, model_pt.with_suffix(".onnx"))
        except Exception as exc:  # noqa: BLE001 - any failure of the export is a warning, not a crash
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            self.print(f"warning: {model_pt.with_suffix('.onnx')} not written: {reason}")
            return
        self._sign(model_pt.with_suffix(".onnx"))
        self.print(f"wrote {model_pt.with_suffix('.onnx')}")

    def _require_an_applied_round(self) -> None:
        """A run that never changed the model did not train anything: it must not end "finished"
        (nor run baselines or publish its initial model as the federation's)."""
        rounds = self.store.rounds(self.state.run_id)  # all of the run's rounds, resumed ones included
        if not any(r.applied for r in rounds):
            last = f"; round {rounds[-1].round}: {rounds[-1].note}" if rounds and rounds[-1].note else ""
            raise NoRoundApplied(f"no round was applied in {len(rounds)} round(s), the model is the initial one{last}")

    def run(self, grid: Grid) -> dict:
        cfg, state = self.cfg, self.state
        if self.resumed:
            self.print(f"resuming run {state.run_id} after round {state.round}/{cfg.num_rounds}")
        status, error, final = "failed", "the ServerApp stopped unexpectedly", None
        stopped: str | None = None
        try:
            load_weights(self.model, state.weights)
            if state.committed_cer is None and server_validates(cfg.aggregate):  # new run, or a state from before
                state.committed_cer, state.committed_loss = validate(self.model, self.charset, self.val)
            if state.round == 0:
                cer = "n/a" if state.committed_cer is None else f"{state.committed_cer:.4f}"
                self.print(f"round 0: initial model ({self.init_desc}) val CER {cer}")
            self.introduce(grid)
            for rnd in range(state.round + 1, cfg.num_rounds + 1):
                available = len(self._nodes(grid))
                stop = self.chain.refusal(state.steps, Cohort(available, cfg.clients_per_round(available)))
                if stop:  # e.g. the privacy budget: recorded in the report, not a failure
                    stopped = f"stopped before round {rnd}: {stop}"
                    self.print(f"run {stopped}")
                    break
                record = self.run_round(grid, rnd)
                self._save_round(record)
                cer = "n/a" if record.val_cer is None else f"{record.val_cer:.4f}"
                self.print(f"round {rnd}/{cfg.num_rounds}  accepted {record.accepted}/{record.sampled}  "
                           f"val CER {cer}  {record.seconds + (record.val_seconds or 0):.1f} s"
                           + ("" if record.applied else "  (not applied)"))
                for client in record.clients:
                    if not client.accepted:
                        self.print(f"    {client.client}: {client.reason}")
            self._require_an_applied_round()
            membership = self.cluster_membership()
            final = self.final_phase(membership)
            contribution = self.contribution_summary()
            if contribution:
                final = {**(final or {}), "contribution": contribution}
            if self.state.clusters:
                final = {**(final or {}), "clusters": {"k": len(self.state.clusters), "membership": membership}}
            if stopped:
                final = {**(final or {}), "stopped": stopped}
            status, error = "finished", None
        except NotEnoughNodes as exc:
            status, error = "stalled", str(exc)
            self.print(f"run stopped after round {state.round}: {exc}")
        except (NoRoundApplied, RunRefused) as exc:  # not a crash: recorded as failed, no traceback, nothing published
            status, error = "failed", str(exc)
            self.print(f"run failed: {exc}")
        except BaseException as exc:  # recorded, then re-raised: a dead run must not stay "running"
            error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"
            self.print(f"run failed after round {state.round}: {error}")
            raise
        finally:
            self.store.finish_run(state.run_id, status, final=final, error=error)
            report = build_report(self.store, state.run_id)
            write_json(self.out / "report.json", report)
        if status == "finished":
            self.publish()
        return report
