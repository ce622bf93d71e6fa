"""A run's per-client totals over its rounds, built from the store's rows one range of rounds at a
time, so the dashboard adds each new round to what it has instead of re-reading 1,000 rounds.

What is totalled: each client's rounds, accepted / rejected / dropped counts, examples and bytes;
how many records each pipeline step wrote; the privacy spent per client (`dp-*` records with an
epsilon); robust aggregation's anomaly scores (`score` records); each client's contribution
(`contribution` records: leave-one-out and Shapley values summed over rounds, the Monte-Carlo
intervals combined); and the latest rejected updates and flagged scores.
"""
from __future__ import annotations

import copy
import math
from collections import Counter
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

from fedocr.federated.pipeline.contribution import CONFIDENCE

DROPPED = "dropped"          # reasons of clients that never replied start with this word (rounds.py)
LATEST = 200                 # rejected updates and flagged scores kept, newest first


def client_status(accepted: bool, reason: str | None) -> str:
    """accepted, rejected (screened out or left out by the aggregator) or dropped (no reply)."""
    if accepted:
        return "accepted"
    return "dropped" if (reason or "").startswith(DROPPED) else "rejected"


def _add(total: float | None, value: Any) -> float | None:
    return total if not isinstance(value, (int, float)) else (total or 0.0) + value


def _max(best: Any, value: Any) -> Any:
    return value if best is None or (value is not None and value > best) else best


@dataclass
class RunTotals:
    clients: dict[str, dict[str, Any]] = field(default_factory=dict)
    steps: Counter[str] = field(default_factory=Counter)
    privacy: dict[str, dict[str, Any]] = field(default_factory=dict)
    anomaly: dict[str, dict[str, Any]] = field(default_factory=dict)
    contribution: dict[str, dict[str, Any]] = field(default_factory=dict)
    contribution_server: dict[str, Any] | None = None
    cluster: dict[str, int] = field(default_factory=dict)              # a clustered run: each node's latest
    rejections: list[dict[str, Any]] = field(default_factory=list)     # newest first
    flagged: list[dict[str, Any]] = field(default_factory=list)        # newest first

    def merged(self, client_rows: list[dict[str, Any]], step_rows: list[dict[str, Any]],
               step_counts: dict[str, int]) -> "RunTotals":
        """A copy with later rounds' rows added (rows in round order; `info` already parsed)."""
        out = copy.deepcopy(self)
        out.steps.update(step_counts)
        for row in client_rows:
            out._client(row)
        for row in step_rows:
            out._step(row)
        return out

    def _client(self, row: dict[str, Any]) -> None:
        c = self.clients.setdefault(row["client"], {"client": row["client"], "rounds": 0, "accepted": 0, "rejected": 0,
                                                    "dropped": 0, "examples": 0, "bytes_up": 0, "bytes_down": 0,
                                                    "norm_sum": 0.0, "norm_n": 0})
        status = client_status(bool(row["accepted"]), row.get("reason"))
        c["rounds"] += 1
        c[status] += 1
        for key in ("examples", "bytes_up", "bytes_down"):
            c[key] += row.get(key) or 0
        if isinstance(row.get("update_norm"), (int, float)) and math.isfinite(row["update_norm"]):
            c["norm_sum"] += row["update_norm"]
            c["norm_n"] += 1
        if status != "accepted":
            self.rejections.insert(0, {"round": row["round"], "client": row["client"], "status": status,
                                       "reason": row.get("reason")})
            del self.rejections[LATEST:]

    def _step(self, row: dict[str, Any]) -> None:
        step, client, info = row["step"], row["client"], row["info"]
        if step.startswith("dp-") and isinstance(info.get("epsilon"), (int, float)):
            p = self.privacy.setdefault(client, {"client": client, "epsilon": None, "delta": None,
                                                 "target_epsilon": None, "last_round": 0, "step": step})
            for key in ("epsilon", "delta", "target_epsilon"):
                p[key] = _max(p[key], info.get(key))
            p["last_round"] = max(p["last_round"], row["round"])
        elif step == "score":
            a = self.anomaly.setdefault(client, {"client": client, "scored": 0, "flagged": 0, "cosine_sum": 0.0,
                                                 "contribution": None})
            a["scored"] += 1
            a["flagged"] += bool(info.get("flagged"))
            a["cosine_sum"] += info.get("cosine") or 0.0
            a["contribution"] = _add(a["contribution"], info.get("contribution"))
            if info.get("flagged"):
                self.flagged.insert(0, {"round": row["round"], "client": client, "verdict": info.get("verdict"),
                                        "norm": info.get("norm"), "cosine": info.get("cosine"), "clip": info.get("clip")})
                del self.flagged[LATEST:]
        elif step == "cluster" and client != "*" and isinstance(info.get("cluster"), int):
            self.cluster[client] = info["cluster"]
        elif step == "contribution":
            if client == "*":
                self.contribution_server = dict(info)
                return
            c = self.contribution.setdefault(client, {"client": client, "rounds": 0, "loo": None, "shapley": None,
                                                      "variance": 0.0, "with_ci": 0, "samples": None})
            c["rounds"] += 1
            c["loo"] = _add(c["loo"], info.get("loo"))
            c["shapley"] = _add(c["shapley"], info.get("shapley"))
            c["samples"] = _max(c["samples"], info.get("samples"))
            if isinstance(info.get("shapley_se"), (int, float)):   # as contribution.cumulate sums them
                c["variance"] += float(info["shapley_se"]) ** 2
                c["with_ci"] += 1

    # -- the shapes the dashboard answers with ------------------------------------------------------
    def client_totals(self) -> list[dict[str, Any]]:
        return [{k: v for k, v in c.items() if k not in ("norm_sum", "norm_n")}
                | {"mean_update_norm": c["norm_sum"] / c["norm_n"] if c["norm_n"] else None,
                   "cluster": self.cluster.get(name)}
                for name, c in sorted(self.clients.items())]

    def anomaly_totals(self) -> list[dict[str, Any]]:
        return [{k: v for k, v in a.items() if k != "cosine_sum"} | {"mean_cosine": a["cosine_sum"] / a["scored"]}
                for _, a in sorted(self.anomaly.items())]

    def contributions(self) -> list[dict[str, Any]]:
        """Highest first. A run's Shapley value is the sum of its rounds' values; the rounds' Monte-Carlo
        errors are independent, so their variances add (the same interval as report.json's totals)."""
        z = NormalDist().inv_cdf(0.5 + CONFIDENCE / 2)
        rows = []
        for c in self.contribution.values():
            half = z * math.sqrt(c["variance"]) if c["with_ci"] and c["shapley"] is not None else None
            rows.append({"client": c["client"], "rounds": c["rounds"], "loo": c["loo"], "shapley": c["shapley"],
                         "shapley_ci": [c["shapley"] - half, c["shapley"] + half] if half is not None else None,
                         "samples": c["samples"]})
        return sorted(rows, key=lambda r: -(r["shapley"] if r["shapley"] is not None else r["loo"] or 0.0))

    def privacy_spent(self) -> list[dict[str, Any]]:
        return [p for _, p in sorted(self.privacy.items())]
