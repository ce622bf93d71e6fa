"""Pydantic models of the dashboard's API answers, so /docs (and the fuzzer reading it) describe them."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

ClientStatus = Literal["accepted", "rejected", "dropped"]


class RunSummary(BaseModel):
    run_id: str
    name: str
    status: str = Field(description="running, finished, stalled or failed")
    federation: str | None
    rounds: int = Field(description="rounds recorded so far")
    best_val_cer: float | None = Field(description="lowest validation CER of any recorded round")
    created: str
    updated: str
    error: str | None = Field(default=None, description="why the run did not finish")


class RunList(BaseModel):
    store: str = Field(description="the run store's file name")
    runs: list[RunSummary] = Field(description="newest first")


class RoundSummary(BaseModel):
    round: int
    finished: str | None
    seconds: float | None = Field(description="wall time of the round")
    train_seconds: float | None = Field(description="local training on the critical path")
    overhead_seconds: float | None = Field(description="framework overhead: transport, serialisation, scheduling")
    val_seconds: float | None
    val_cer: float | None
    val_loss: float | None
    sampled: int | None
    accepted: int | None
    rejected: int = Field(description="clients whose update was screened out or left out")
    dropped: int = Field(description="sampled clients that did not reply in time")
    clients: int
    applied: bool = Field(description="false: the round was rolled back or not applied (see note)")
    note: str | None
    epsilon: float | None = Field(description="privacy spent by the end of this round, if DP is on")
    lr: float | None = Field(description="the local learning rate sent this round")
    bytes_up: int
    bytes_down: int


class ClientRow(BaseModel):
    client: str
    node_id: str | None
    status: ClientStatus
    reason: str | None
    accepted: bool
    examples: int | None
    loss: float | None
    train_seconds: float | None
    client_seconds: float | None
    update_norm: float | None
    bytes_up: int | None
    bytes_down: int | None


class StepRow(BaseModel):
    client: str = Field(description='the client, or "*" for a server-level record')
    step: str = Field(description="the pipeline step that wrote it (check, score, robust, dp-noise, commit, ...)")
    info: dict[str, Any]


class RoundDetail(BaseModel):
    summary: RoundSummary
    clients: list[ClientRow]
    steps: list[StepRow]


class ClientTotals(BaseModel):
    client: str
    rounds: int
    accepted: int
    rejected: int
    dropped: int
    examples: int | None
    bytes_up: int | None
    bytes_down: int | None
    mean_update_norm: float | None
    cluster: int | None = None     # a clustered run: the node's latest cluster


class Rejection(BaseModel):
    round: int
    client: str
    status: ClientStatus
    reason: str | None


class PrivacySpent(BaseModel):
    client: str = Field(description='"*": the server (client-level DP covers all nodes)')
    epsilon: float | None
    delta: float | None
    target_epsilon: float | None
    last_round: int
    step: str


class AnomalyTotals(BaseModel):
    client: str
    scored: int
    flagged: int | None
    mean_cosine: float | None
    contribution: float | None = Field(description="summed share of the aggregated step (robust's score)")


class Anomaly(BaseModel):
    round: int
    client: str
    verdict: str | None
    norm: float | None
    cosine: float | None
    clip: float | None


class Contribution(BaseModel):
    client: str
    rounds: int
    loo: float | None = Field(description="leave-one-out contribution to validation CER, summed over rounds")
    shapley: float | None = Field(description="Monte-Carlo / GTG-Shapley estimate, summed over rounds")
    shapley_ci: list[float] | None = Field(description="confidence interval of the summed estimate")
    samples: int | None


class ContributionPanel(BaseModel):
    clients: list[Contribution]
    server: dict[str, Any] | None = Field(description='the latest "*" record: the method, or why it is off')


class RunDetail(BaseModel):
    run: RunSummary
    out_dir: str | None
    config: dict[str, Any] | None
    chain: str | None = Field(description="the client and server step chains this run's config builds")
    final: dict[str, Any] | None
    audit: dict[str, Any] | None
    flower_run_ids: list[str] | None
    rounds: list[RoundSummary]
    clients: list[ClientTotals]
    rejections: list[Rejection] = Field(description="the latest rejected or dropped clients, newest first")
    steps: dict[str, int] = Field(description="records per pipeline step in this run (which panels have data)")
    privacy: list[PrivacySpent]
    anomaly_totals: list[AnomalyTotals]
    anomalies: list[Anomaly] = Field(description="the latest flagged updates, newest first")
    contribution: ContributionPanel
    saved_rounds: list[int] = Field(description="rounds whose checkpoint is in the run's folder (can be made live)")


class UseRound(BaseModel):
    run_id: str
    round: int = Field(ge=0)
