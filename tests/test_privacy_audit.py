"""The privacy audit: membership-inference AUC, canaries planted in a node's lines, and their
exposure (Carlini et al. 2019) under a model that trained on them."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from fedocr.charset import Charset
from fedocr.cli import main
from fedocr.data import EncodedLines, InMemoryLines, SyntheticLines
from fedocr.data.canaries import SecretFormat, canary_lines, draw_secrets, occluded, with_lines
from fedocr.data.organisations import MINI_PRESETS, named_charset, org_lines
from fedocr.federated.config import ConfigError, FlConfig
from fedocr.federated.pipeline.checks import tensor_digest
from fedocr.federated.runs.store import RunStore
from fedocr.federated.sim.audit import planted_reading
from fedocr.federated.sim.canaries import (SECRETS_FILE, Secrets, plant, read_secrets, run_secrets,
                                           write_secrets)
from fedocr.federated.weights import model_weights
from fedocr.model import CRNN, ModelConfig, save_checkpoint
from fedocr.train import TrainConfig, Trainer
from fedocr.train.audit import auc, canary_exposure, chance_exposure, exposure, max_exposure, membership_auc

BANK = MINI_PRESETS["bank"]
FORMAT = SecretFormat("银行", 8)


def test_auc_matches_a_hand_computed_example() -> None:
    # Pairs (member, non-member): 0.9>0.5, 0.9>0.3, 0.8>0.5, 0.8>0.3, 0.4<0.5, 0.4>0.3 -> 5/6.
    assert auc(np.array([0.9, 0.8, 0.4]), np.array([0.5, 0.3])) == pytest.approx(5 / 6)
    # A tie counts half: (0.5 vs 0.5) = 0.5, 0.5>0.3, 0.8>0.5, 0.8>0.3 -> 3.5/4.
    assert auc(np.array([0.5, 0.8]), np.array([0.5, 0.3])) == pytest.approx(3.5 / 4)
    assert auc(np.array([1.0, 2.0]), np.array([3.0, 4.0])) == 0.0


def test_exposure_is_log2_of_candidates_over_rank() -> None:
    candidates = np.arange(1.0, 1000.0)           # 999 candidates, the canary scores below all of them
    assert exposure(0.5, candidates) == pytest.approx(np.log2(1000)) == pytest.approx(max_exposure(999))
    assert exposure(1000.5, candidates) == pytest.approx(0.0)  # last of 1000
    assert exposure(499.5, candidates) == pytest.approx(np.log2(1000 / 500))
    assert chance_exposure(999) == pytest.approx(1 / np.log(2), abs=0.01)  # Carlini et al.: ~1.44 bits


def test_canaries_are_planted_k_times_in_one_node_and_their_secrets_recorded(tmp_path: Path) -> None:
    charset = named_charset("mini")
    cfg = FlConfig.from_run_config({"federation": "three-orgs-mini", "lines-per-client": 12, "canary.org": "bank",
                                    "canary.count": 2, "canary.repeats": 3, "canary.digits": 6})
    secrets = run_secrets(cfg)
    assert secrets is not None and secrets.org == "bank" and len(secrets.planted) == 2
    assert all(s.startswith("银行") and len(s) == 8 for s in secrets.planted + secrets.controls)
    assert not set(secrets.planted) & set(secrets.controls)
    bank = org_lines("three-orgs-mini", "bank", "train", 12, cfg.seed, charset.version, charset)
    planted = plant(cfg, "bank", bank, charset)
    texts = list(planted.texts())
    assert len(planted) == 12 + 2 * 3 and texts[:12] == list(bank.texts())
    assert all(texts.count(s) == 3 for s in secrets.planted) and not any(c in texts for c in secrets.controls)
    hospital = org_lines("three-orgs-mini", "hospital", "train", 12, cfg.seed, charset.version, charset)
    assert plant(cfg, "hospital", hospital, charset) is hospital
    assert run_secrets(cfg) == secrets  # drawn from the run seed: every node process plants the same

    write_secrets(tmp_path, secrets)
    assert read_secrets(tmp_path) == secrets and "银行" in (tmp_path / SECRETS_FILE).read_text()


def test_canary_and_audit_keys_are_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="canary.org"):
        FlConfig.from_run_config({"federation": "three-orgs-mini", "canary.org": "casino"})
    with pytest.raises(ConfigError, match="canary.repeat: unknown key"):
        FlConfig.from_run_config({"canary.repeat": 5})
    with pytest.raises(ConfigError, match="audit.hidden-digits"):
        FlConfig.from_run_config({"canary.digits": 4, "audit.hidden-digits": 4})
    cfg = FlConfig.from_run_config({"canary.org": "bank", "audit.candidates": "200"})
    assert cfg.audit.candidates == 200 and cfg.audit.wanted and cfg.to_run_config()["canary.org"] == "bank"


def test_occluded_line_keeps_its_width_but_not_the_hidden_digits() -> None:
    charset = named_charset("mini")
    image = occluded(BANK, "银行12345678", 4, seed=3, charset=charset)
    assert image.dtype == np.uint8 and image.shape[1] > 60
    # The tail holds no ink; the head still does.
    right = image[:, int(image.shape[1] * 0.75):]
    assert right.min() == image.max() and image[:, : image.shape[1] // 3].min() < image.max() - 60


def train_on_canaries(dp_noise_multiplier: float = 0.0) -> tuple[CRNN, Charset, list[str], list[str]]:
    """A tiny CRNN trained on 200 bank lines plus 2 secrets x 50 renderings (~1.5 min on 1 core
    without DP), with DP-SGD when `dp_noise_multiplier` > 0. One torch thread while it trains:
    with small batches a second one only waits."""
    torch.manual_seed(0)
    charset = named_charset("mini")
    rng = random.Random(0)
    planted = draw_secrets(FORMAT, 2, rng)
    controls = draw_secrets(FORMAT, 2, rng, exclude=planted)
    base = InMemoryLines(SyntheticLines(BANK, 200, seed=11, charset=charset))
    data = with_lines(base, canary_lines(BANK, planted, 50, seed=500, charset=charset))
    model = CRNN(ModelConfig(len(charset), "tiny"))
    config = TrainConfig(max_steps=200, batch_size=16, lr=3e-3, warmup_steps=20, log_every=10**9,
                         dp_noise_multiplier=dp_noise_multiplier)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        Trainer(model, charset, EncodedLines(data, charset), config, log=lambda _: None).fit()
    finally:
        torch.set_num_threads(threads)
    return model.eval(), charset, planted, controls


@pytest.fixture(scope="module")
def canary_model() -> tuple[CRNN, Charset, list[str], list[str]]:
    return train_on_canaries()


def candidates_for(secret: str, planted: list[str], controls: list[str]) -> list[str]:
    """The 100 random secrets of the format `secret` is ranked among (none planted or a control)."""
    return draw_secrets(FORMAT, 100, random.Random(secret), exclude=planted + controls)


def raw_exposures(model: CRNN, charset: Charset, planted: list[str],
                  controls: list[str]) -> tuple[list[float], list[float]]:
    """Raw exposure of each planted secret and each control among its 100 candidates, on
    renderings of seed 999, which the planted lines (seeds 500 + 7919 i) never used."""
    def exposed(secret: str) -> float:
        candidates = candidates_for(secret, planted, controls)
        return canary_exposure(model, charset, secret, candidates, BANK, seed=999, n_renderings=3)["raw"]
    return [exposed(s) for s in planted], [exposed(s) for s in controls]


@pytest.mark.slow
@pytest.mark.timeout(1200)  # the first one trains the module's model: ~2 min on 2 idle cores
def test_a_heavily_repeated_canary_is_exposed_and_a_control_is_not(canary_model) -> None:  # type: ignore[no-untyped-def]
    planted_bits, control_bits = raw_exposures(*canary_model)
    chance = chance_exposure(100)
    assert np.mean(planted_bits) > chance + 1.5, (planted_bits, control_bits)
    assert np.mean(planted_bits) > np.mean(control_bits) + 1.5, (planted_bits, control_bits)


@pytest.mark.slow
@pytest.mark.timeout(1200)  # the module's model, then a DP-SGD twin: ~5 min with another job on the 2 cores
def test_dp_sgd_brings_the_repeated_canarys_exposure_down(  # type: ignore[no-untyped-def]
        canary_model, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same lines, steps and rate under DP-SGD (clip 1, noise multiplier 1.5: epsilon 2.8 at
    delta 1e-5 for 200 steps at q = 16/300) expose the planted secrets far less. Not necessarily
    down to chance: the guarantee is per line, and a secret on 50 lines is a group of 50, whose
    bound, (50 epsilon, 50 e^(49 epsilon) delta), promises nothing here. The noise is seeded here
    (it comes from the OS's entropy in a real run) so the test reads the same every time."""
    from fedocr.train import private   # Opacus with it: ~3 s of import only the DP tests pay

    draws = iter(range(1000))
    monkeypatch.setattr(private, "secret_generator", lambda: torch.Generator().manual_seed(next(draws)))
    plain, _ = raw_exposures(*canary_model)
    dp, controls = raw_exposures(*train_on_canaries(dp_noise_multiplier=1.5))
    assert np.mean(dp) < np.mean(plain) - 1.5, (dp, controls, plain)


@pytest.mark.slow
@pytest.mark.timeout(1200)  # the first one trains the module's model: ~2 min on 2 idle cores
def test_membership_auc_sees_the_overfit_training_lines(canary_model) -> None:  # type: ignore[no-untyped-def]
    model, charset, _, _ = canary_model
    members = InMemoryLines(SyntheticLines(BANK, 100, seed=11, charset=charset))   # the first 100 trained on
    non_members = InMemoryLines(SyntheticLines(BANK, 100, seed=12, charset=charset))
    assert 0.55 < membership_auc(model, charset, members, non_members)["raw"] <= 1.0


def test_fl_audit_writes_the_block_into_report_and_store_and_show_prints_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI on a hand-made run folder (an untrained model: the numbers do not matter here)."""
    charset = named_charset("mini")
    out, store_path = tmp_path / "run", tmp_path / "runs.db"
    cfg = FlConfig.from_run_config({"federation": "three-orgs-mini", "lines-per-client": 8, "test-lines": 8,
                                    "out-dir": str(out), "store": str(store_path), "canary.org": "school",
                                    "canary.count": 1, "canary.repeats": 2, "audit.candidates": 5,
                                    "audit.renderings": 1, "audit.hidden-digits": 2})
    torch.manual_seed(0)
    save_checkpoint(out / "model.pt", CRNN(ModelConfig(len(charset), "tiny")), charset)
    with RunStore(store_path) as store:
        store.start_run("run1", "demo", cfg.to_dict(), cfg.federation, str(out))
        store.finish_run("run1", final={"clients": {}})
    (out / "report.json").write_text(json.dumps({"run_id": "run1", "rounds": [], "config": {
        **cfg.to_dict(), "initial_model_resolved": "scratch (tiny, mini charset)"}}))

    assert main(["fl", "audit", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "membership inference AUC" in printed and "planted mean" in printed
    assert "no calibrated attacks: the run started from scratch" in printed
    assert "planted lines (2) read at CER" in printed and "under the start" not in printed
    report = json.loads((out / "report.json").read_text())
    audit = report["audit"]
    assert "calibrated" not in audit["canaries"] and "calibrated_mean_auc" not in audit["membership"]
    assert set(audit["membership"]["nodes"]) == {"hospital", "bank", "school"}
    assert all(0 <= n["auc"] <= 1 and n["members"] == 8 for n in audit["membership"]["nodes"].values())
    canaries = audit["canaries"]
    assert canaries["node"] == "school" and canaries["full"]["candidates"] == 5
    assert len(canaries["full"]["planted"]) == 1 and len(canaries["occluded"]["controls"]) == 1
    assert canaries["planted_lines"]["lines"] == 2 and "start_cer" not in canaries["planted_lines"]
    secrets = read_secrets(out)
    assert secrets is not None and secrets.planted[0] not in (out / "report.json").read_text()

    assert main(["fl", "show", "run1", "--store", str(store_path)]) == 0
    assert "membership inference AUC" in capsys.readouterr().out
    assert main(["fl", "show", "run1", "--store", str(store_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["audit"]["canaries"]["node"] == "school"
    with RunStore(store_path) as store:  # a resumed run changes the model: its audit is cleared
        store.start_run("run1", "demo", cfg.to_dict(), cfg.federation, str(out))
        assert store.run("run1")["audit"] is None  # type: ignore[index]


def test_fl_audit_refuses_a_folder_that_is_not_a_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fl", "audit", str(tmp_path)]) != 0
    assert "report.json and model.pt" in capsys.readouterr().err


def test_fl_audit_of_a_run_from_a_checkpoint_also_runs_the_attacks_calibrated_by_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The reference is the model the run recorded it started from, and only while that file still
    holds the same weights (untrained models: the numbers do not matter here)."""
    charset = named_charset("mini")
    out, start = tmp_path / "run", tmp_path / "start.pt"
    torch.manual_seed(0)
    save_checkpoint(out / "model.pt", CRNN(ModelConfig(len(charset), "tiny")), charset)
    starting_model = CRNN(ModelConfig(len(charset), "tiny"))
    save_checkpoint(start, starting_model, charset)
    cfg = FlConfig.from_run_config({"federation": "three-orgs-mini", "lines-per-client": 6, "test-lines": 6,
                                    "initial-model": str(start), "out-dir": str(out),
                                    "canary.org": "bank", "canary.count": 1, "canary.repeats": 2,
                                    "audit.candidates": 4, "audit.renderings": 1})
    recorded = {**cfg.to_dict(), "initial_model_resolved": str(start),
                "initial_model_digest": tensor_digest(model_weights(starting_model))}
    (out / "report.json").write_text(json.dumps({"run_id": "run1", "config": recorded, "rounds": []}))

    assert main(["fl", "audit", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"calibrated by {start}" in printed and "planted lines (2) read at CER" in printed
    audit = json.loads((out / "report.json").read_text())["audit"]
    assert audit["reference"] == str(start) and "no_reference" not in audit
    assert 0 <= audit["membership"]["calibrated_mean_auc"] <= 1
    assert set(audit["membership"]["nodes"]["bank"]) >= {"auc", "calibrated_auc"}
    assert len(audit["canaries"]["calibrated"]["planted"]) == 1 and "calibrated" in audit["canaries"]
    assert set(audit["canaries"]["planted_lines"]) == {"lines", "start_cer", "final_cer"}

    torch.manual_seed(1)   # the starting file replaced since the run: calibrating by it would mislead
    save_checkpoint(start, CRNN(ModelConfig(len(charset), "tiny")), charset)
    assert main(["fl", "audit", str(out), "--json"]) == 0
    audit = json.loads(capsys.readouterr().out)
    assert "other weights than the run started from" in audit["no_reference"]
    assert "calibrated" not in audit["canaries"] and "calibrated_mean_auc" not in audit["membership"]


@pytest.mark.slow
@pytest.mark.timeout(1200)  # the first one trains the module's model: ~2 min on 2 idle cores
def test_calibrated_exposure_ranks_what_training_took_the_loss_off_first(canary_model) -> None:  # type: ignore[no-untyped-def]
    """Calibrated by an untrained model, whose loss is nearly the same on every number of one
    format and rendering, the planted secret keeps its rank: a lower score is "trained on". (Not
    membership: an untrained reference's loss follows the length of a line, which members and
    non-members do not share.)"""
    model, charset, planted, controls = canary_model
    torch.manual_seed(0)
    start = CRNN(ModelConfig(len(charset), "tiny")).eval()
    secret = planted[0]
    bits = canary_exposure(model, charset, secret, candidates_for(secret, planted, controls), BANK, seed=999,
                           n_renderings=3, reference=start)
    assert bits["calibrated"] > chance_exposure(100) + 1.5, bits


@pytest.mark.slow
@pytest.mark.timeout(1200)  # the first one trains the module's model: ~2 min on 2 idle cores
def test_planted_reading_shows_the_planted_lines_learnt_from_the_start(  # type: ignore[no-untyped-def]
        canary_model) -> None:
    """The audit's CER of the planted lines themselves: the fixture's model trained on exactly the
    renderings `planted_lines` redraws (bank's mini style, seeds 500 + 7919 i), an untrained start
    reads none of them."""
    model, charset, planted, controls = canary_model
    torch.manual_seed(0)
    start = CRNN(ModelConfig(len(charset), "tiny")).eval()
    secrets = Secrets("bank", FORMAT.prefix, FORMAT.digits, 50, tuple(planted), tuple(controls), render_seed=500)
    cfg = FlConfig.from_run_config({"federation": "three-orgs-mini"})
    read = planted_reading(model, charset, cfg, secrets, reference=start)
    assert read["lines"] == 100
    assert read["start_cer"] > 0.9 and read["final_cer"] < 0.5 * read["start_cer"], read
