"""The federation dashboard: its read-only API over the run store (written through the real
RunStore API, no federation runs), stores it cannot read, the token, making a round live, the
standalone HTML report, and the page itself in a real headless Chromium following a run live."""
from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from dashboard_fixtures import POISON_REASON, add_round, write_run
from fedocr.cli import main
from fedocr.serve.app import ServeConfig, create_app
from serve_fixtures import CHROMIUM, chromium_page, live_command, random_model

DASHBOARD_PATHS = ("/api/runs", "/api/runs/{run_id}", "/api/runs/{run_id}/rounds",
                   "/api/runs/{run_id}/rounds/{round_no}", "/api/runs/{run_id}/events", "/api/model/use")


def client_for(store: Path, **config: object) -> TestClient:
    return TestClient(create_app(ServeConfig(model=None, runs=store, **config)))  # type: ignore[arg-type]


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    return write_run(tmp_path / "runs.db", rounds=2)


def test_run_page_data_shows_rounds_rejections_privacy_anomalies_and_contribution(store: Path) -> None:
    with client_for(store) as client:
        runs = client.get("/api/runs").json()
        assert [(r["run_id"], r["rounds"], r["best_val_cer"]) for r in runs["runs"]] == [("run1", 2, 0.25)]
        detail = client.get("/api/runs/run1").json()
    assert [r["round"] for r in detail["rounds"]] == [1, 2]
    first = detail["rounds"][0]
    assert (first["accepted"], first["rejected"], first["dropped"], first["bytes_up"]) == (2, 1, 0, 2_000_000)
    assert detail["rejections"][0] == {"round": 2, "client": "school", "status": "rejected", "reason": POISON_REASON}
    assert detail["privacy"] == [{"client": "*", "epsilon": 1.0, "delta": 1e-5, "target_epsilon": 8.0, "last_round": 2,
                                  "step": "dp-noise"}]
    assert detail["anomalies"][0]["client"] == "bank" and detail["anomalies"][0]["verdict"] == "opposed"
    contribution = {c["client"]: c for c in detail["contribution"]["clients"]}
    assert list(contribution) == ["hospital", "bank"]            # highest first
    hospital = contribution["hospital"]
    assert hospital["shapley"] == pytest.approx(0.06) and hospital["loo"] == pytest.approx(0.04)
    # two rounds of standard error 0.005 each: the summed estimate's is 0.005 * sqrt(2), its 95% half-width 1.96x
    half = 1.959964 * 0.005 * 2 ** 0.5
    assert hospital["shapley_ci"] == pytest.approx([0.06 - half, 0.06 + half], rel=1e-5)
    assert detail["contribution"]["server"] == {"method": "gtg-shapley"}


def test_one_round_lists_every_client_with_its_status_and_the_step_records(store: Path) -> None:
    with client_for(store) as client:
        round_2 = client.get("/api/runs/run1/rounds/2").json()
    assert {c["client"]: c["status"] for c in round_2["clients"]} == {"bank": "accepted", "hospital": "accepted",
                                                                      "school": "rejected"}
    assert {s["step"] for s in round_2["steps"]} >= {"check", "score", "contribution"}


def test_a_rolled_back_rounds_contributions_do_not_count(store: Path) -> None:
    add_round(store, "run1", 3, rolled_back=True)   # its updates never reached the model (as report.json counts)
    with client_for(store) as client:
        contribution = {c["client"]: c for c in client.get("/api/runs/run1").json()["contribution"]["clients"]}
    assert contribution["hospital"]["shapley"] == pytest.approx(0.06) and contribution["hospital"]["rounds"] == 2


def test_a_rolled_back_round_and_a_run_without_contribution_say_so(tmp_path: Path) -> None:
    path = write_run(tmp_path / "runs.db", rounds=1, contribution=False, rolled_back=True)
    with client_for(path) as client:
        detail = client.get("/api/runs/run1").json()
    assert detail["rounds"][0]["applied"] is False and "rolled back" in detail["rounds"][0]["note"]
    assert detail["contribution"] == {"clients": [], "server": None}


def test_polling_and_the_event_stream_show_a_round_stored_after_the_first_read(store: Path) -> None:
    with client_for(store) as client:
        assert client.get("/api/runs/run1/rounds", params={"after": 2}).json() == []
        # The test client hands over the stream when it closes (max_seconds); a browser gets each event
        # as it is sent (the Chromium test below and bench/dashboard.py measure that).
        timer = threading.Timer(0.5, add_round, (store, "run1", 3))
        timer.start()
        with client.stream("GET", "/api/runs/run1/events", params={"after": 2, "max_seconds": 2.5}) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            text = stream.read().decode()
        timer.join()
        events = [block.split("\n")[0] for block in text.strip().split("\n\n")]
        assert events == ["event: run", "event: round"] and '"round": 3' in text
        assert [r["round"] for r in client.get("/api/runs/run1/rounds", params={"after": 2}).json()] == [3]


def test_unknown_run_or_round_is_404(store: Path) -> None:
    with client_for(store) as client:
        for url in ("/api/runs/nope", "/api/runs/nope/rounds", "/api/runs/run1/rounds/99", "/api/runs/nope/events"):
            answer = client.get(url)
            detail = answer.json()["detail"]
            assert answer.status_code == 404 and ("no run" in detail or "no round" in detail), (url, detail)


def _locked(path: Path) -> sqlite3.Connection:
    """A writer holding an exclusive lock (a rollback-journal store mid-transaction)."""
    write_run(path)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=DELETE")
    db.execute("BEGIN EXCLUSIVE")
    return db


@pytest.mark.parametrize("kind, expected", [
    ("missing", "no run store"), ("empty", "not a fedocr run store"), ("corrupt", "not a readable SQLite"),
    ("other", "not a fedocr run store"), ("locked", "locked")])
def test_a_store_that_cannot_be_read_answers_503_with_a_reason_and_the_page_still_loads(tmp_path: Path, kind: str,
                                                                                        expected: str) -> None:
    path, holder = tmp_path / "runs.db", None
    if kind == "empty":
        path.touch()
    elif kind == "corrupt":
        path.write_bytes(b"this is not a database, just bytes " * 200)
    elif kind == "other":
        sqlite3.connect(path).execute("CREATE TABLE notes (x)").connection.commit()
    elif kind == "locked":
        holder = _locked(path)
    try:
        with client_for(path) as client:
            for url in ("/api/runs", "/api/runs/run1", "/api/runs/run1/events"):
                answer = client.get(url)
                assert answer.status_code == 503, (url, answer.text)
                assert expected in answer.json()["detail"] and "\n" not in answer.json()["detail"]
            assert client.get("/dashboard").status_code == 200
    finally:
        if holder is not None:
            holder.close()


def test_a_store_of_an_older_schema_still_shows_its_rounds(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE runs (run_id TEXT PRIMARY KEY, name TEXT NOT NULL, created TEXT NOT NULL, updated TEXT NOT NULL,
            status TEXT NOT NULL, federation TEXT, out_dir TEXT, config TEXT NOT NULL, final TEXT,
            flower_run_ids TEXT NOT NULL DEFAULT '[]');
        CREATE TABLE rounds (run_id TEXT NOT NULL, round INTEGER NOT NULL, finished TEXT NOT NULL, seconds REAL,
            train_seconds REAL, overhead_seconds REAL, val_seconds REAL, val_cer REAL, val_loss REAL, sampled INTEGER,
            accepted INTEGER, applied INTEGER NOT NULL, note TEXT, epsilon REAL, PRIMARY KEY (run_id, round));
        CREATE TABLE clients (run_id TEXT NOT NULL, round INTEGER NOT NULL, client TEXT NOT NULL, node_id TEXT,
            examples INTEGER, loss REAL, train_seconds REAL, client_seconds REAL, update_norm REAL, bytes_up INTEGER,
            bytes_down INTEGER, accepted INTEGER NOT NULL, reason TEXT, PRIMARY KEY (run_id, round, client));
        INSERT INTO runs VALUES ('old1', 'old', '2025-01-01', '2025-01-01', 'finished', 'three-orgs', NULL, '{}', NULL, '[]');
        INSERT INTO rounds VALUES ('old1', 1, '2025-01-01', 5, 4, 1, 0.1, 0.3, 1.5, 2, 1, 1, NULL, NULL);
        INSERT INTO clients VALUES ('old1', 1, 'bank', '1', 10, 1.0, 1, 1, 2.0, 5, 5, 0, 'dropped: no reply');
    """)
    db.commit()
    db.close()
    with client_for(path) as client:
        detail = client.get("/api/runs/old1")
        assert detail.status_code == 200, detail.text
        body = detail.json()
        assert body["rounds"][0]["lr"] is None and body["rounds"][0]["dropped"] == 1
        assert body["steps"] == {} and body["contribution"]["clients"] == [] and body["audit"] is None
        assert client.get("/api/runs/old1/rounds/1").json()["steps"] == []
    assert "steps" not in {r[0] for r in sqlite3.connect(path).execute("SELECT name FROM sqlite_master")}  # untouched


def test_dashboard_endpoints_are_in_the_openapi_schema_and_need_the_token(store: Path) -> None:
    with client_for(store, token="s3cret") as client:
        paths = client.app.openapi()["paths"]   # type: ignore[attr-defined]
        assert all(path in paths for path in DASHBOARD_PATHS)
        assert client.get("/api/runs").status_code == 401
        assert client.get("/api/runs", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert client.get("/dashboard").status_code == 200          # the page asks for the token itself


def test_a_dashboard_only_server_answers_503_for_the_ocr_routes(store: Path) -> None:
    with client_for(store) as client:
        assert client.get("/api/health").json()["model"] is None
        assert client.get("/api/model").status_code == 503
        answer = client.post("/api/ocr", files={"image": ("x.png", b"not an image")})
        assert answer.status_code == 503 and "no OCR model" in answer.json()["detail"]
        assert client.post("/api/model/use", json={"run_id": "run1", "round": 1}).status_code == 503
        assert client.get("/", follow_redirects=False).headers["location"] == "/dashboard"


def test_making_a_round_live_serves_that_rounds_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    random_model(out / "round-2.pt", seed=2, provenance={"kind": "federated", "run_id": "run1", "round": 2})
    path = write_run(tmp_path / "runs.db", rounds=2, out_dir=out)
    served = random_model(tmp_path / "served.pt", seed=1)
    with TestClient(create_app(ServeConfig(model=served, runs=path, token="t"))) as client:
        auth = {"Authorization": "Bearer t"}
        assert client.post("/api/model/use", json={"run_id": "run1", "round": 2}).status_code == 401
        assert client.get("/api/runs/run1", headers=auth).json()["saved_rounds"] == [2]
        answer = client.post("/api/model/use", json={"run_id": "run1", "round": 2}, headers=auth)
        assert answer.status_code == 200 and answer.json()["changed"]
        model = client.get("/api/model", headers=auth).json()
        assert (model["file"], model["run"], model["round"]) == ("round-2.pt", "run1", 2)
        missing = client.post("/api/model/use", json={"run_id": "run1", "round": 1}, headers=auth)
        assert missing.status_code == 404 and "round-1.pt" in missing.json()["detail"]
        assert client.post("/api/model/use", json={"run_id": "zzz", "round": 2}, headers=auth).status_code == 404


def test_the_html_report_is_one_standalone_file(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    assert main(["fl", "report", "run1", "--html", str(out), "--store", str(store)]) == 0
    html = out.read_text(encoding="utf-8")
    assert 'src="/static' not in html and 'href="/static' not in html and "uPlot" in html
    assert POISON_REASON in html and '"shapley_ci"' in html and 'id="report-data"' in html
    assert main(["fl", "report", "nope", "--html", str(out), "--store", str(store)]) == 3
    assert list(tmp_path.glob(".report.html.*")) == []                # no temporary file left behind


@pytest.mark.slow
def test_dashboard_api_never_answers_5xx_or_breaks_its_schema(store: Path) -> None:
    """Schemathesis from the OpenAPI schema, as tests/test_serve_fuzz.py does for the OCR API (this
    server has no model, so making a round live answers its documented 503)."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode
    from schemathesis.specs.openapi.checks import status_code_conformance

    app = create_app(ServeConfig(model=None, runs=store))
    with TestClient(app):
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        tested = []
        for result in schema.get_all_operations():
            operation = result.ok()
            if "/api/runs" not in operation.label and "/api/model/use" not in operation.label:
                continue
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                @given(case=operation.as_strategy(generation_mode=mode))
                @settings(max_examples=15, deadline=None, database=None, suppress_health_check=list(HealthCheck))
                def fuzz(case) -> None:  # type: ignore[no-untyped-def]
                    if "events" in operation.label:
                        case.query = {**(case.query or {}), "max_seconds": 0.5}  # a stream must end
                    response = case.call()
                    # 503 is the documented "no run store / no model here" answer; anything else 5xx is a bug.
                    assert response.status_code < 500 or response.status_code == 503, (case.path, response.text)
                    case.validate_response(response, checks=[status_code_conformance])

                try:
                    fuzz()
                except Unsatisfiable:
                    continue
            tested.append(operation.label)
    assert len(tested) == len(DASHBOARD_PATHS)


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed (scripts/setup.sh)")
def test_the_page_follows_a_run_live_and_shows_why_a_client_was_rejected(store: Path) -> None:
    with live_command(["fl", "dashboard", "--store", str(store)]) as base, chromium_page() as page:
        requested: list[str] = []
        page.on("request", lambda request: requested.append(request.url))
        page.goto(base + "/dashboard")
        page.wait_for_selector("#runs tbody tr")
        page.click("#runs tbody tr")
        page.wait_for_selector("#rounds tbody tr[data-round='2']")
        assert page.locator("#round-clients tr.rejected").inner_text().startswith("school")
        assert POISON_REASON in page.inner_text("#round-clients tr.rejected")
        assert page.locator("#chart-cer canvas").count() == 1 and page.locator("#chart-contribution canvas").count() == 1
        add_round(store, "run1", 3, rolled_back=True)     # the federation stores a round: no reload
        page.wait_for_selector("#rounds tbody tr.rolled-back[data-round='3']", timeout=10_000)
        assert "rolled back" in page.inner_text("#rounds tbody tr[data-round='3']")
        page.click("#lang")
        assert page.inner_text("#rejections .reason >> nth=0") == POISON_REASON
        assert "拒绝" in page.inner_text("#round-clients tr.rejected")
        assert requested and all(url.startswith(base) for url in requested), requested


def test_the_dashboard_commands_take_a_store_and_refuse_a_bad_port(store: Path) -> None:
    from fedocr.cli import build_parser

    assert build_parser().parse_args(["serve", "--runs", str(store)]).runs == store
    assert main(["fl", "dashboard", "--store", str(store), "--port", "70000"]) == 2
