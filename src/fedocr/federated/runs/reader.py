"""Read-only queries over the run store for the dashboard and the HTML report.

The store's own read methods load every client row and step record of a run into dataclasses,
which is what report.json needs but far too much for a page that must open in well under a
second on a 1,000-round, 100-client run. Here the per-round summaries are computed by SQLite, the
rows behind the per-client totals are read by ranges of rounds (the primary keys start with
run and round, so a range is an index lookup) for `federated.runs.totals`, and one round's rows
are read only when a page asks for that round.

Stores written by older versions lack some columns (`lr`, `audit`) or the `steps` table; those
read as missing values or "not recorded", never as an error. A file that is not a run store at
all, or cannot be read now (locked, corrupt), raises `StoreUnavailable` with a one-line reason.
"""
from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path
from typing import Any

from fedocr.federated.runs.store import RunStore
from fedocr.federated.runs.totals import DROPPED, client_status

ROUND_COLUMNS = ("round", "finished", "seconds", "train_seconds", "overhead_seconds", "val_seconds", "val_cer",
                 "val_loss", "sampled", "accepted", "applied", "note", "epsilon", "lr")
CLIENT_COLUMNS = ("client", "node_id", "examples", "loss", "train_seconds", "client_seconds", "update_norm",
                  "bytes_up", "bytes_down", "accepted", "reason")


class StoreUnavailable(Exception):
    """The store cannot be read (missing, not a run store, locked, corrupt): a one-line reason."""


def _status_sql() -> str:
    """SQL sums of rejected and dropped client rows (a dropped client never replied)."""
    return (f"SUM(accepted = 0 AND COALESCE(reason, '') NOT LIKE '{DROPPED}%') AS rejected, "
            f"SUM(accepted = 0 AND COALESCE(reason, '') LIKE '{DROPPED}%') AS dropped")


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: they read as missing."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


class RunReader:
    """One read-only connection to a store; cheap to open per request."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise StoreUnavailable(f"no run store at {self.path} (is --runs/--store right? a federation creates "
                                   f"it with its first run)")
        try:
            self.store = RunStore.open_readonly(self.path)
        except sqlite3.Error as exc:
            raise StoreUnavailable(self._reason(exc)) from None
        try:
            db = self.store.db
            self.tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            # Which columns this store's version has (older ones lack some): read what exists.
            self.columns = {t: {r[1] for r in db.execute(f"PRAGMA table_info({t})")} for t in self.tables}
        except sqlite3.Error as exc:
            self.close()
            raise StoreUnavailable(self._reason(exc)) from None
        if "runs" not in self.tables or "rounds" not in self.tables:
            self.close()
            raise StoreUnavailable(f"{self.path.name} is not a fedocr run store (no runs and rounds tables)")

    def _reason(self, exc: sqlite3.Error) -> str:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "locked" in text or "busy" in text:
            return f"{self.path.name} is locked by another process; try again in a moment"
        if "not a database" in text or "malformed" in text:
            return f"{self.path.name} is not a readable SQLite run store ({text})"
        return f"{self.path.name}: {text}"

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> "RunReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _rows(self, sql: str, *params: Any) -> list[dict[str, Any]]:
        try:
            return [{k: _finite(v) for k, v in dict(r).items()} for r in self.store.db.execute(sql, params)]
        except sqlite3.Error as exc:  # locked mid-read, or damaged pages found only now
            raise StoreUnavailable(self._reason(exc)) from None

    def _has(self, table: str, column: str | None = None) -> bool:
        return table in self.tables and (column is None or column in self.columns.get(table, set()))

    def data_version(self) -> int:
        """Changes whenever another connection commits (the federation wrote something)."""
        return int(self._rows("PRAGMA data_version")[0]["data_version"])

    # -- runs ----------------------------------------------------------------------------------
    def runs(self) -> list[dict[str, Any]]:
        error = "r.error" if self._has("runs", "error") else "NULL"
        return self._rows(
            f"SELECT r.run_id, r.name, r.status, r.federation, r.created, r.updated, {error} AS error, "
            "COUNT(d.round) AS rounds, MIN(d.val_cer) AS best_val_cer "
            "FROM runs r LEFT JOIN rounds d ON d.run_id = r.run_id GROUP BY r.run_id ORDER BY r.created DESC")

    def run(self, run_id: str) -> dict[str, Any] | None:
        """The run's row with its JSON fields parsed, or None when there is no such run."""
        rows = self._rows("SELECT * FROM runs WHERE run_id=?", run_id)
        if not rows:
            return None
        run = rows[0]
        for key in ("config", "final", "audit", "flower_run_ids"):
            run[key] = _json(run.get(key))
        run.setdefault("error", None)
        summary = self._rows("SELECT COUNT(*) AS rounds, MIN(val_cer) AS best_val_cer FROM rounds WHERE run_id=?",
                             run_id)[0]
        return run | summary

    # -- rounds --------------------------------------------------------------------------------
    def rounds(self, run_id: str, after: int = 0, upto: int | None = None) -> list[dict[str, Any]]:
        """One summary per round in (after, upto]: the round's row plus its clients' totals."""
        last = upto if upto is not None else 2**62
        cols = ", ".join(f"r.{c}" if self._has("rounds", c) else f"NULL AS {c}" for c in ROUND_COLUMNS)
        if self._has("clients"):
            joined = (f"LEFT JOIN (SELECT round, COUNT(*) AS clients, SUM(bytes_up) AS bytes_up, "
                      f"SUM(bytes_down) AS bytes_down, {_status_sql()} FROM clients WHERE run_id=? AND round>? AND round<=? "
                      f"GROUP BY round) c ON c.round = r.round")
            extra, params = "c.clients, c.bytes_up, c.bytes_down, c.rejected, c.dropped", [run_id, after, last]
        else:
            joined, extra, params = "", "0 AS clients, 0 AS bytes_up, 0 AS bytes_down, 0 AS rejected, 0 AS dropped", []
        rows = self._rows(f"SELECT {cols}, {extra} FROM rounds r {joined} WHERE r.run_id=? AND r.round>? "
                          f"AND r.round<=? ORDER BY r.round", *params, run_id, after, last)
        for row in rows:
            row["applied"] = bool(row["applied"])
            for key in ("clients", "bytes_up", "bytes_down", "rejected", "dropped"):
                row[key] = row[key] or 0
        return rows

    def round_clients(self, run_id: str, rnd: int) -> list[dict[str, Any]]:
        if not self._has("clients"):
            return []
        cols = ", ".join(c if self._has("clients", c) else f"NULL AS {c}" for c in CLIENT_COLUMNS)
        rows = self._rows(f"SELECT {cols} FROM clients WHERE run_id=? AND round=? ORDER BY client", run_id, rnd)
        for row in rows:
            row["accepted"] = bool(row["accepted"])
            row["status"] = client_status(row["accepted"], row["reason"])
        return rows

    def round_steps(self, run_id: str, rnd: int) -> list[dict[str, Any]]:
        if not self._has("steps"):
            return []
        return [{"client": r["client"], "step": r["step"], "info": _json(r["info"]) or {}}
                for r in self._rows("SELECT client, step, info FROM steps WHERE run_id=? AND round=? ORDER BY seq",
                                    run_id, rnd)]

    # -- raw rows of a range of rounds, for the run's totals (federated.runs.totals) ----------------------
    def last_round(self, run_id: str) -> int:
        return int(self._rows("SELECT COALESCE(MAX(round), 0) AS n FROM rounds WHERE run_id=?", run_id)[0]["n"])

    def _plain(self, sql: str, *params: Any) -> list[dict[str, Any]]:
        """Rows as dicts without sqlite3.Row or cleaning: the bulk reads of hundreds of thousands of rows."""
        try:
            cursor = self.store.db.cursor()
            cursor.row_factory = None
            cursor.execute(sql, params)
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, values)) for values in cursor.fetchall()]
        except sqlite3.Error as exc:
            raise StoreUnavailable(self._reason(exc)) from None

    def client_rows(self, run_id: str, after: int, upto: int) -> list[dict[str, Any]]:
        if not self._has("clients"):
            return []
        return self._plain("SELECT round, client, accepted, reason, examples, bytes_up, bytes_down, update_norm "
                           "FROM clients WHERE run_id=? AND round>? AND round<=? ORDER BY round, client",
                           run_id, after, upto)

    def step_counts(self, run_id: str, after: int, upto: int) -> dict[str, int]:
        """How many records each pipeline step wrote in these rounds (which panels have data)."""
        if not self._has("steps"):
            return {}
        return {r["step"]: r["n"] for r in self._plain("SELECT step, COUNT(*) AS n FROM steps WHERE run_id=? AND "
                                                        "round>? AND round<=? GROUP BY step", run_id, after, upto)}

    def step_rows(self, run_id: str, after: int, upto: int) -> list[dict[str, Any]]:
        """The records the run's totals use (privacy, anomaly scores, contribution, clusters), `info` parsed,
        in the primary key's order (round, client), which needs no sort."""
        if not self._has("steps"):
            return []
        # Contributions count over applied rounds only, as report.json's run totals do: a rolled-back
        # round's updates never reached the model.
        rows = self._plain("SELECT round, client, step, info FROM steps WHERE run_id=? AND round>? AND round<=? "
                           "AND (step IN ('score', 'cluster') OR step LIKE 'dp-%' OR (step = 'contribution' AND round IN "
                           "(SELECT round FROM rounds WHERE run_id=? AND applied=1))) ORDER BY round, client, seq",
                           run_id, after, upto, run_id)
        try:   # one parse of all the records as one JSON array: several times faster than one per row
            infos = json.loads("[" + ",".join(row["info"] or "null" for row in rows) + "]", parse_constant=_no_constant)
        except ValueError:   # a damaged record: parse one by one, the damaged one reads as empty
            infos = [_json(row["info"]) for row in rows]
        for row, info in zip(rows, infos):
            row["info"] = info if isinstance(info, dict) else {}
        return rows


def _json(text: str | None) -> Any:
    if not text:
        return None
    try:
        return json.loads(text, parse_constant=_no_constant)
    except ValueError:
        return None


def _no_constant(_: str) -> None:
    """NaN and infinities (Python's json writes them) read as missing: JSON answers cannot carry them."""
    return None


def round_model(out_dir: str | None, rnd: int) -> Path:
    """The checkpoint a run saved for round `rnd` (OUT/round-N.pt); FileNotFoundError with a reason
    when the run has no output folder here or that round's file is gone."""
    if not out_dir:
        raise FileNotFoundError("this run recorded no output folder")
    folder = Path(out_dir).resolve()
    path = (folder / f"round-{int(rnd)}.pt").resolve()
    if path.parent != folder:  # cannot happen for an int round; kept as the rule the endpoint relies on
        raise FileNotFoundError("the round's file lies outside the run's output folder")
    if not path.is_file():
        raise FileNotFoundError(f"round-{rnd}.pt is not in {folder} (deleted, or the store was moved)")
    return path


def saved_rounds(out_dir: str | None) -> list[int]:
    """Rounds whose checkpoint is still in the run's output folder (what can be made live)."""
    if not out_dir or not Path(out_dir).is_dir():
        return []
    found = []
    for path in Path(out_dir).glob("round-*.pt"):
        number = path.stem.removeprefix("round-")
        if number.isdigit():
            found.append(int(number))
    return sorted(found)
