"""Certificates and node keys for a deployment: private keys are never readable by others, and an
existing CA is not replaced by accident."""
from __future__ import annotations

import stat
from pathlib import Path

import pytest

from fedocr.cli import main
from fedocr.federated.deploy.certs import CertError, check_bundle, make_bundle


def test_private_keys_are_created_owner_only(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    make_bundle(out, ["127.0.0.1"], ["bank"])
    for key in (out / "ca.key", out / "server.key", out / "nodes" / "bank"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    assert not list(out.rglob(".*.tmp"))
    assert check_bundle(out, ["127.0.0.1"])


def test_certs_refuse_a_non_empty_folder_unless_forced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "certs"
    make_bundle(out, ["127.0.0.1"], ["bank"])
    ca = (out / "ca.crt").read_bytes()
    with pytest.raises(CertError, match="not empty"):
        make_bundle(out, ["127.0.0.1"], ["bank"])
    assert main(["fl", "certs", "--out", str(out), "--hosts", "127.0.0.1", "--nodes", "bank"]) != 0
    assert "--force" in capsys.readouterr().err and (out / "ca.crt").read_bytes() == ca
    assert main(["fl", "certs", "--out", str(out), "--hosts", "127.0.0.1", "--nodes", "bank", "--force"]) == 0
    assert (out / "ca.crt").read_bytes() != ca
    assert stat.S_IMODE((out / "ca.key").stat().st_mode) == 0o600
