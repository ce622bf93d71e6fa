"""Certificates and node keys for a deployment: private keys are never readable by others, an
existing CA is not replaced by accident, a bundle for real host names works with the deploy
scripts, the server certificate renews under an offline CA, and nodes can make their own keys."""
from __future__ import annotations

import datetime as dt
import os
import shutil
import stat
import sys
from pathlib import Path

import pytest
from cryptography import x509

from fedocr.cli import main
from fedocr.federated.deploy.certs import CertError, check_bundle, make_bundle

sys.path.insert(0, str(Path(__file__).parent))
from fl_fixtures import Deployment, wait_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


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


def _not_after(path: Path) -> dt.datetime:
    return x509.load_pem_x509_certificate(path.read_bytes()).not_valid_after_utc


def test_a_bundle_for_real_hosts_passes_the_superlinks_check_and_renews_under_an_offline_ca(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, offline = tmp_path / "certs", tmp_path / "offline"
    assert main(["fl", "certs", "--out", str(out), "--hosts", "fl.example.org,203.0.113.10", "--nodes", "hospital"]) == 0
    assert main(["fl", "certs", "--check", "--out", str(out), "--nodes", ""]) == 0   # what deploy/superlink.sh runs
    assert "ca.key sits beside server.key" in capsys.readouterr().err
    assert main(["fl", "certs", "--check", "--out", str(out), "--hosts", "fl.other.org"]) != 0
    assert "subjectAltName lacks fl.other.org" in capsys.readouterr().err

    offline.mkdir()
    (out / "ca.key").rename(offline / "ca.key")
    kept = {p: p.read_bytes() for p in [out / "ca.crt", *sorted((out / "nodes").iterdir())]}
    old_server = (out / "server.pem").read_bytes()
    assert main(["fl", "certs", "--renew-server", "--out", str(out)]) != 0
    assert "give the CA key kept offline with --ca-key" in capsys.readouterr().err
    stranger = tmp_path / "stranger"
    make_bundle(stranger, ["127.0.0.1"], [])
    assert main(["fl", "certs", "--renew-server", "--out", str(out), "--ca-key", str(stranger / "ca.key")]) != 0
    assert "not the key of" in capsys.readouterr().err and (out / "server.pem").read_bytes() == old_server

    assert main(["fl", "certs", "--renew-server", "--out", str(out), "--ca-key", str(offline / "ca.key"),
                 "--days", "90"]) == 0
    printed = capsys.readouterr()
    assert "fl.example.org, 203.0.113.10" in printed.out or "203.0.113.10, fl.example.org" in printed.out
    assert "warning" not in printed.err   # the CA key is offline now, and nothing expires soon
    assert {p: p.read_bytes() for p in kept} == kept   # nodes keep their ca.crt, keys and registrations
    assert (out / "server.pem").read_bytes() != old_server
    assert 89 <= (_not_after(out / "server.pem") - dt.datetime.now(dt.timezone.utc)).days <= 90
    assert stat.S_IMODE((out / "server.key").stat().st_mode) == 0o600

    (out / "server.key").write_bytes((stranger / "server.key").read_bytes())   # a renewal stopped between its files
    assert main(["fl", "certs", "--check", "--out", str(out)]) != 0
    assert "--renew-server` again" in capsys.readouterr().err
    assert main(["fl", "certs", "--renew-server", "--out", str(out), "--ca-key", str(offline / "ca.key")]) == 0
    assert main(["fl", "certs", "--check", "--out", str(out)]) == 0


def test_the_check_warns_a_month_before_a_certificate_expires(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "certs"
    make_bundle(out, ["127.0.0.1"], [], days=10)
    (out / "ca.key").unlink()
    assert main(["fl", "certs", "--check", "--out", str(out)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "server.pem expires in 9 days" in err[0] and "--renew-server" in err[0]
    for bad in (["--days", "0"], ["--check", "--renew-server"]):
        assert main(["fl", "certs", "--out", str(out), *bad]) == 2


def test_an_organisation_makes_its_own_node_key_and_sends_only_the_public_half(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle, org = tmp_path / "certs", tmp_path / "clinic-machine"
    make_bundle(bundle, ["127.0.0.1"], [])
    assert main(["fl", "node-key", "--out", str(org), "--name", "clinic"]) == 0
    assert stat.S_IMODE((org / "clinic").stat().st_mode) == 0o600
    private = (org / "clinic").read_bytes()
    assert main(["fl", "node-key", "--out", str(org), "--name", "clinic"]) != 0   # never replaces a key
    assert "exists" in capsys.readouterr().err and (org / "clinic").read_bytes() == private
    (bundle / "nodes").mkdir(exist_ok=True)
    shutil.copy(org / "clinic.pub", bundle / "nodes" / "clinic.pub")   # all the operator receives
    assert "ok  node key clinic (secp384r1)" in check_bundle(bundle)


@pytest.mark.slow
def test_superlink_sh_starts_on_a_bundle_made_for_another_host(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    make_bundle(certs, ["fl.example.org"], [])
    dep = Deployment(tmp_path, certs, {**os.environ, "HOME": str(tmp_path)})
    try:
        proc = dep.start("superlink-sh", ["bash", str(ROOT / "deploy" / "superlink.sh"), str(certs),
                                          str(tmp_path / "state"), str(dep.port)])
        wait_port(dep.port, proc, timeout=90)
        assert (tmp_path / "state" / "superlink.db").is_file()
    finally:
        dep.stop()
    assert dep.alive() == []
