"""The run store: one SQLite database (WAL mode) that the server writes as each round ends.

It is the single source the report and the dashboard read: runs with their config, rounds
(wall time, training time, framework overhead, validation CER/loss, whether the round was
applied) and one row per client per round (examples, loss, update norm, bytes up/down,
accepted or rejected and why), and what each update-pipeline step did per client per round
(one generic table: a new step needs no new column). Rows are upserted, so a round redone after a server restart
replaces its half-written record instead of duplicating it. WAL lets the dashboard read while
the server writes.
"""
from __future__ import annotations

import datetime as dt
import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fedocr.federated.pipeline.types import StepRecord

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, name TEXT NOT NULL, created TEXT NOT NULL, updated TEXT NOT NULL,
    status TEXT NOT NULL, federation TEXT, out_dir TEXT, config TEXT NOT NULL,
    final TEXT, flower_run_ids TEXT NOT NULL DEFAULT '[]', error TEXT, audit TEXT);
CREATE TABLE IF NOT EXISTS rounds (
    run_id TEXT NOT NULL REFERENCES runs(run_id), round INTEGER NOT NULL, finished TEXT NOT NULL,
    seconds REAL, train_seconds REAL, overhead_seconds REAL, val_seconds REAL,
    val_cer REAL, val_loss REAL, sampled INTEGER, accepted INTEGER, applied INTEGER NOT NULL,
    note TEXT, epsilon REAL, lr REAL, PRIMARY KEY (run_id, round));
CREATE TABLE IF NOT EXISTS clients (
    run_id TEXT NOT NULL, round INTEGER NOT NULL, client TEXT NOT NULL, node_id TEXT,
    examples INTEGER, loss REAL, train_seconds REAL, client_seconds REAL, update_norm REAL,
    bytes_up INTEGER, bytes_down INTEGER, accepted INTEGER NOT NULL, reason TEXT,
    PRIMARY KEY (run_id, round, client));
CREATE TABLE IF NOT EXISTS steps (
    run_id TEXT NOT NULL, round INTEGER NOT NULL, client TEXT NOT NULL, seq INTEGER NOT NULL,
    step TEXT NOT NULL, info TEXT NOT NULL, PRIMARY KEY (run_id, round, client, seq));
CREATE TABLE IF NOT EXISTS readmissions (
    run_id TEXT NOT NULL, client TEXT NOT NULL, requested TEXT NOT NULL, done_round INTEGER,
    PRIMARY KEY (run_id, client, requested));
"""


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class ClientRecord:
    client: str                      # organisation / node name
    node_id: str
    accepted: bool
    reason: str | None = None        # why it was rejected or dropped
    examples: int = 0
    loss: float | None = None
    train_seconds: float | None = None    # local training only
    client_seconds: float | None = None   # the ClientApp's whole handler (data, model, training)
    update_norm: float | None = None
    bytes_up: int = 0
    bytes_down: int = 0


@dataclass
class RoundRecord:
    round: int
    seconds: float                   # wall time from sending to the last reply / deadline
    sampled: int
    accepted: int
    applied: bool
    train_seconds: float | None = None      # local training on the critical path
    overhead_seconds: float | None = None   # everything else of the wall time (framework)
    val_seconds: float | None = None
    val_cer: float | None = None
    val_loss: float | None = None
    note: str | None = None
    epsilon: float | None = None
    lr: float | None = None                 # the local learning rate the server sent this round
    clients: list[ClientRecord] = field(default_factory=list)
    steps: list[StepRecord] = field(default_factory=list)   # what each pipeline step did ("*": the server's)


class RunStore:
    """Open (and create) the store at `path`. Cheap: open one per process or per request."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=30)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        # Stores written before runs recorded why they failed, or rounds their learning rate.
        for table, column, kind in (("runs", "error", "TEXT"), ("rounds", "lr", "REAL"), ("runs", "audit", "TEXT")):
            if column not in {row["name"] for row in self.db.execute(f"PRAGMA table_info({table})")}:
                with self._tx() as db:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")

    @classmethod
    def open_readonly(cls, path: str | Path, timeout: float = 2.0) -> "RunStore":
        """Open an existing store for reading only (the dashboard, while a federation writes it in
        WAL mode): nothing is created or migrated, so an older schema stays as it is. Raises
        sqlite3.OperationalError for a missing file."""
        store = cls.__new__(cls)
        store.path = Path(path)
        # check_same_thread off: the dashboard's event stream polls from worker threads, one at a time.
        store.db = sqlite3.connect(f"{store.path.resolve().as_uri()}?mode=ro", uri=True, timeout=timeout,
                                   check_same_thread=False)
        store.db.row_factory = sqlite3.Row
        return store

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "RunStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self.db:  # commits on success, rolls back on error
            yield self.db

    # -- writes ------------------------------------------------------------------------------
    def start_run(self, run_id: str, name: str, config: dict[str, Any], federation: str | None,
                  out_dir: str | None, flower_run_id: int | None = None) -> None:
        """Create the run, or mark an existing one (a resume) running again."""
        with self._tx() as db:
            row = db.execute("SELECT flower_run_ids FROM runs WHERE run_id=?", (run_id,)).fetchone()
            ids = json.loads(row["flower_run_ids"]) if row else []
            if flower_run_id is not None and str(flower_run_id) not in ids:
                ids.append(str(flower_run_id))
            if row:
                # A resumed run changes the model: an audit of the old one no longer describes it.
                db.execute("UPDATE runs SET status='running', error=NULL, audit=NULL, updated=?, config=?, "
                           "flower_run_ids=? WHERE run_id=?",
                           (_now(), json.dumps(config), json.dumps(ids), run_id))
            else:
                db.execute("INSERT INTO runs (run_id, name, created, updated, status, federation, out_dir, config, "
                           "flower_run_ids) VALUES (?,?,?,?,?,?,?,?,?)",
                           (run_id, name, _now(), _now(), "running", federation, out_dir, json.dumps(config),
                            json.dumps(ids)))

    def record_round(self, run_id: str, record: RoundRecord) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM clients WHERE run_id=? AND round=?", (run_id, record.round))
            db.execute("DELETE FROM steps WHERE run_id=? AND round=?", (run_id, record.round))
            db.execute("INSERT OR REPLACE INTO rounds (run_id, round, finished, seconds, train_seconds, "
                       "overhead_seconds, val_seconds, val_cer, val_loss, sampled, accepted, applied, note, epsilon, "
                       "lr) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                       (run_id, record.round, _now(), record.seconds, record.train_seconds, record.overhead_seconds,
                        record.val_seconds, record.val_cer, record.val_loss, record.sampled, record.accepted,
                        int(record.applied), record.note, record.epsilon, record.lr))
            db.executemany("INSERT INTO clients (run_id, round, client, node_id, examples, loss, train_seconds, "
                           "client_seconds, update_norm, bytes_up, bytes_down, accepted, reason) "
                           "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                           [(run_id, record.round, c.client, c.node_id, c.examples, c.loss, c.train_seconds,
                             c.client_seconds, c.update_norm, c.bytes_up, c.bytes_down, int(c.accepted), c.reason)
                            for c in record.clients])
            db.executemany("INSERT INTO steps (run_id, round, client, seq, step, info) VALUES (?,?,?,?,?,?)",
                           [(run_id, record.round, s.client, i, s.step, json.dumps(dict(s.info), default=float))
                            for i, s in enumerate(record.steps)])
            db.execute("UPDATE runs SET updated=? WHERE run_id=?", (_now(), run_id))

    def finish_run(self, run_id: str, status: str = "finished", final: dict[str, Any] | None = None,
                   error: str | None = None) -> None:
        """Mark the run `status` ("finished", "stalled" or "failed"); `error` says why it did not finish."""
        with self._tx() as db:
            db.execute("UPDATE runs SET status=?, updated=?, error=? WHERE run_id=?", (status, _now(), error, run_id))
            if final is not None:
                db.execute("UPDATE runs SET final=? WHERE run_id=?", (json.dumps(final), run_id))

    def record_audit(self, run_id: str, audit: dict[str, Any]) -> None:
        """The privacy audit of the run's published model (federated.sim.audit); a resume clears it."""
        with self._tx() as db:
            db.execute("UPDATE runs SET audit=?, updated=? WHERE run_id=?", (json.dumps(audit), _now(), run_id))

    def request_readmission(self, run_id: str, client: str) -> None:
        """The operator takes a quarantined node back; the running server acts on it next round."""
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO readmissions (run_id, client, requested) VALUES (?,?,?)",
                       (run_id, client, _now()))

    def pending_readmissions(self, run_id: str) -> list[str]:
        rows = self.db.execute("SELECT DISTINCT client FROM readmissions WHERE run_id=? AND done_round IS NULL "
                               "ORDER BY client", (run_id,)).fetchall()
        return [str(r["client"]) for r in rows]

    def readmitted(self, run_id: str, client: str, server_round: int) -> None:
        with self._tx() as db:
            db.execute("UPDATE readmissions SET done_round=? WHERE run_id=? AND client=? AND done_round IS NULL",
                       (server_round, run_id, client))

    # -- reads -------------------------------------------------------------------------------
    def runs(self) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT r.run_id, r.name, r.created, r.updated, r.status, r.federation, r.out_dir, "
            "COUNT(d.round) AS rounds, MIN(d.val_cer) AS best_val_cer "
            "FROM runs r LEFT JOIN rounds d ON d.run_id = r.run_id GROUP BY r.run_id ORDER BY r.created").fetchall()
        return [dict(r) for r in rows]

    def find(self, ref: str) -> str | None:
        """A run id from an id, a unique id prefix or a run name (the latest with that name)."""
        row = self.db.execute("SELECT run_id FROM runs WHERE run_id=?", (ref,)).fetchone()
        if row:
            return str(row["run_id"])
        rows = self.db.execute("SELECT run_id FROM runs WHERE run_id LIKE ? OR name=? ORDER BY created DESC",
                               (ref + "%", ref)).fetchall()
        return str(rows[0]["run_id"]) if rows else None

    def run(self, run_id: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM runs WHERE run_id=?", (run_id,)).fetchone()
        if row is None:
            return None
        run = dict(row)
        run["config"] = json.loads(run["config"])
        run["final"] = json.loads(run["final"]) if run["final"] else None
        run["audit"] = json.loads(run["audit"]) if run.get("audit") else None
        run["flower_run_ids"] = json.loads(run["flower_run_ids"])
        return run

    def rounds(self, run_id: str) -> list[RoundRecord]:
        clients: dict[int, list[ClientRecord]] = {}
        for row in self.db.execute("SELECT * FROM clients WHERE run_id=? ORDER BY round, client", (run_id,)):
            d = dict(row)
            clients.setdefault(d.pop("round"), []).append(
                ClientRecord(**{k: v for k, v in d.items() if k != "run_id"} | {"accepted": bool(d["accepted"])}))
        steps: dict[int, list[StepRecord]] = {}
        for row in self.db.execute("SELECT round, client, step, info FROM steps WHERE run_id=? ORDER BY round, seq",
                                   (run_id,)):
            steps.setdefault(row["round"], []).append(StepRecord(row["step"], row["client"], json.loads(row["info"])))
        out = []
        for row in self.db.execute("SELECT * FROM rounds WHERE run_id=? ORDER BY round", (run_id,)):
            d = {k: v for k, v in dict(row).items() if k not in ("run_id", "finished")}
            d["applied"] = bool(d["applied"])
            out.append(RoundRecord(**d, clients=clients.get(d["round"], []), steps=steps.get(d["round"], [])))
        return out


def round_to_dict(record: RoundRecord) -> dict[str, Any]:
    """The report.json shape of a round (docs/ARCHITECTURE.md): `clients` use `id` for the client name."""
    d = asdict(record)
    d["clients"] = [{"id": c.pop("client"), **c} for c in d["clients"]]
    d["steps"] = [{"client": s.client, "step": s.step, **dict(s.info)} for s in record.steps]
    return d
