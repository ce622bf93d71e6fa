"""The report's final table: each organisation's CER on its own and on the others' test sets,
for its local-only model, the federated model and a centralized model.

Both baselines start from the federation's initial model and run the same training recipe as a
client's local epochs (`config.local_recipe`) for the same budget: rounds x local
epochs passes over their data. Local-only sees one organisation's lines; centralized sees all
organisations' lines pooled (what FedAvg would approach if the data could be shared).
"""
from __future__ import annotations

import copy
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedocr.charset import Charset
from fedocr.data import ConcatLines, EncodedLines, LineDataset
from fedocr.federated.config import FlConfig, local_recipe
from fedocr.data.organisations import get_federation, org_lines
from fedocr.federated.node_state import default_state_path, load_node_state
from fedocr.federated.pipeline.build import build_client_chain
from fedocr.federated.vocab import initial_model
from fedocr.federated.weights import load_weights, model_weights
from fedocr.model import CRNN, load_checkpoint, save_checkpoint, torch_logits_fn
from fedocr.model.checkpoint import provenance
from fedocr.train import TrainConfig, Trainer, evaluate


def baseline_train_config(cfg: FlConfig, n_lines: int) -> TrainConfig:
    """The client's local recipe for rounds x epochs: a short warm-up, then the rate decays per
    step along the cosine the federation follows per round (or stays constant with lr-decay none)."""
    steps = max(1, round(cfg.num_rounds * cfg.local_epochs * -(-n_lines // cfg.batch_size)))
    return local_recipe(cfg, steps, cfg.seed, decay=cfg.decays())


def _ray_running() -> bool:
    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())


@contextmanager
def _threads_beside_ray() -> Iterator[None]:
    """One torch thread while Ray actors share the cores (two torch threads each on two shared
    cores only oversubscribe); the process's setting is restored afterwards."""
    before = torch.get_num_threads()
    if _ray_running():
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _train(cfg: FlConfig, charset: Charset, data: LineDataset) -> tuple[CRNN, float]:
    model, _, _ = initial_model(cfg)
    lines = EncodedLines(data, charset)
    with _threads_beside_ray():
        result = Trainer(model, charset, lines, baseline_train_config(cfg, len(lines)), log=lambda _: None).fit()
    return model, result.seconds


def train_baseline(cfg: FlConfig, charset: Charset, data: LineDataset) -> CRNN:
    """A local-only model of `data`: the federation's initial model, recipe and training budget."""
    return _train(cfg, charset, data)[0]


def _cer(model: CRNN, charset: Charset, data: LineDataset) -> float:
    return evaluate(torch_logits_fn(model), charset, data).cer


def test_sets(cfg: FlConfig, charset: Charset) -> dict[str, LineDataset]:
    """Each organisation's synthetic test lines (never trained on)."""
    fed = get_federation(cfg.federation)
    return {o: org_lines(cfg.federation, o, "test", cfg.test_lines, cfg.seed, charset.version, charset) for o in fed.names}


def own_and_others_cer(model: CRNN, charset: Charset, test: dict[str, LineDataset], org: str) -> tuple[float, float]:
    """(CER on `org`'s own test lines, CER on the other organisations' test lines)."""
    others = ConcatLines([lines for o, lines in test.items() if o != org], f"not-{org}")
    return _cer(model, charset, test[org]), _cer(model, charset, others)


def personal_models(cfg: FlConfig, global_model: CRNN, run_id: str | None) -> dict[str, CRNN]:
    """Each simulated node's personalised model (its own head or BatchNorm layers on the global
    model, or its Ditto model), read from the node state it keeps under the out-dir (the global
    model for a node that never trained); empty when the run does not personalise."""
    chain = build_client_chain(cfg.to_run_config())
    if cfg.aggregate == "all" and chain.personal() is None or run_id is None:
        return {}
    global_weights = model_weights(global_model)
    models = {}
    for node in get_federation(cfg.federation).names:
        # A node never sampled has no state: what it would serve is the global model as it stands.
        states = load_node_state(default_state_path(cfg.out_path(), node), run_id)
        models[node] = load_weights(copy.deepcopy(global_model), chain.personal_weights(global_weights, states))
    return models


def final_evaluation(cfg: FlConfig, federated_model: Path, printer: Callable[[str], None] = print,
                     cluster_models: dict[str, Path] | None = None) -> dict[str, Any]:
    """Train the baselines, evaluate all three kinds of model per organisation, save the baselines.
    `cluster_models`: in a clustered run, the model of each node's cluster (its `cluster` column)."""
    fed = get_federation(cfg.federation)
    federated = load_checkpoint(federated_model)
    charset = federated.charset
    train = {o: org_lines(cfg.federation, o, "train", cfg.lines_per_client, cfg.seed, charset.version, charset)
             for o in fed.names}
    test = test_sets(cfg, charset)
    out = cfg.out_path()
    models: dict[str, dict[str, CRNN]] = {o: {"federated": federated.model} for o in fed.names}
    personal = personal_models(cfg, federated.model, federated.provenance.get("run_id"))
    for org, model in personal.items():   # FedPer, FedBN or Ditto: what each node itself would serve
        models[org]["personalized"] = model
    loaded = {path: load_checkpoint(path).model for path in set((cluster_models or {}).values())}
    for org, path in (cluster_models or {}).items():   # IFCA: the model of the node's cluster
        models[org]["cluster"] = loaded[path]
    seconds: dict[str, float] = {}
    for org in fed.names:
        printer(f"baseline: local-only {org} ({len(train[org])} lines, {cfg.num_rounds} x {cfg.local_epochs:g} epochs)")
        model, seconds[f"local_only/{org}"] = _train(cfg, charset, train[org])
        models[org]["local_only"] = model
        save_checkpoint(out / f"local-only-{org}.pt", model, charset, provenance(kind="local-only", org=org))
    printer(f"baseline: centralized ({sum(len(t) for t in train.values())} pooled lines)")
    central, seconds["centralized"] = _train(cfg, charset, ConcatLines(list(train.values()), "pooled"))
    save_checkpoint(out / "centralized.pt", central, charset, provenance(kind="centralized", orgs=list(fed.names)))
    t0 = time.time()
    clients: dict[str, Any] = {}
    for org in fed.names:
        models[org]["centralized"] = central
        scores = {kind: own_and_others_cer(m, charset, test, org) for kind, m in models[org].items()}
        clients[org] = {"own_test_cer": {kind: s[0] for kind, s in scores.items()},
                        "other_test_cer": {kind: s[1] for kind, s in scores.items()}}
    kinds = ("local_only", "federated", "centralized") + (("personalized",) if personal else ())
    kinds += ("cluster",) if cluster_models and set(cluster_models) >= set(fed.names) else ()
    mean = {kind: float(np.mean([c["own_test_cer"][kind] for c in clients.values()])) for kind in kinds}
    return {"clients": clients, "mean_own_test_cer": mean, "baseline_train_seconds": seconds,
            "eval_seconds": time.time() - t0, "federated_model": str(federated_model)}
