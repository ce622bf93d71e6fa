"""TLS certificates and SuperNode keys for Flower's deployment engine, made and checked here.

`make_bundle` writes, into one folder:
- `ca.crt` / `ca.key`: a private certificate authority (keep ca.key offline);
- `server.pem` / `server.key`: the SuperLink's certificate, signed by the CA, with a SAN for
  every name and IP address the SuperNodes and the operator's CLI use to reach it;
- `nodes/NAME` / `nodes/NAME.pub`: one ECDSA P-384 key pair per SuperNode in OpenSSH format
  (what `flower-supernode --auth-supernode-private-key` and `flwr supernode register` read).
`check_bundle` verifies all of it before anything starts and names the bad file or field;
`renew_server` replaces the SuperLink's certificate under the same CA; `write_node_key` is what an
organisation runs on its own machine, so only the public half ever leaves it.
Built on the `cryptography` package (which Flower itself uses), not on shelling out to openssl.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NODE_DIR = "nodes"
WARN_DAYS = 30   # `--check` warns this long before a certificate expires


class CertError(ValueError):
    """A certificate or key that cannot be used; the message names the file and field."""


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedocr federation"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _write(path: Path, data: bytes, private: bool = False) -> None:
    """Write `data` to a temporary name in the same folder, created with its final mode (0600 for
    a private key, so it is never readable by others, not even for a moment), then rename it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600 if private else 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _server_cert(ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, hosts: Sequence[str],
                 days: int) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A SuperLink certificate signed by the CA, with a SAN for every host name and IP."""
    now = dt.datetime.now(dt.timezone.utc)
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (x509.CertificateBuilder().subject_name(_name(hosts[0])).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return cert, key


def write_node_key(folder: Path, name: str) -> Path:
    """One SuperNode's ECDSA P-384 key pair in OpenSSH format: `folder/name` (0600) and
    `folder/name.pub`, the only file the operator needs. Refuses to replace an existing key: its
    public half may already be registered."""
    private = folder / name
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise CertError(f"node name {name!r}: use letters, digits, '-' or '_'")
    if private.exists() or private.with_name(f"{name}.pub").exists():
        raise CertError(f"{private}: a key of that name exists (its public half may be registered); "
                        f"remove it first or choose another name")
    key = ec.generate_private_key(ec.SECP384R1())
    _write(private, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                      serialization.NoEncryption()), private=True)
    public = private.with_name(f"{name}.pub")
    _write(public, key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
           + f" fedocr-{name}\n".encode())
    return public


def make_bundle(out: Path, hosts: Sequence[str], nodes: Sequence[str], days: int = 365, force: bool = False,
                ca_days: int = 3650) -> None:
    """Write the CA (valid `ca_days`), the SuperLink certificate for `hosts` (valid `days`) and one
    key pair per node name.

    Refuses a folder that is not empty unless `force`: a new CA invalidates the certificates and
    node registrations made with the old one.
    """
    if not hosts:
        raise CertError("give at least one SuperLink host name or IP for the certificate")
    if not force and out.is_dir() and any(out.iterdir()):
        raise CertError(f"{out}: not empty; a new CA would invalidate the existing certificates and registered "
                        f"nodes (use --force to replace them, or another folder)")
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca = (x509.CertificateBuilder().subject_name(_name("fedocr CA")).issuer_name(_name("fedocr CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=max(ca_days, days)))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    server, server_key = _server_cert(ca, ca_key, hosts, days)
    pem = serialization.Encoding.PEM
    _write(out / "ca.crt", ca.public_bytes(pem))
    _write(out / "ca.key", _key_pem(ca_key), private=True)
    _write(out / "server.pem", server.public_bytes(pem))
    _write(out / "server.key", _key_pem(server_key), private=True)
    for node in nodes:
        if force:   # replaced on purpose: the old key belonged to the old bundle
            for old in (out / NODE_DIR / node, out / NODE_DIR / f"{node}.pub"):
                old.unlink(missing_ok=True)
        write_node_key(out / NODE_DIR, node)


def renew_server(folder: Path, ca_key_path: Path | None = None, hosts: Sequence[str] = (), days: int = 365) -> None:
    """A new SuperLink key and certificate under the same CA: SuperNodes keep their `ca.crt`, and
    node registrations (public keys in the SuperLink's database) are untouched. `hosts` defaults
    to the current certificate's names; the CA key may be read from offline storage."""
    ca = _load_cert(folder / "ca.crt")
    ca_key_path = ca_key_path or folder / "ca.key"
    try:
        ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
    except FileNotFoundError:
        raise CertError(f"{ca_key_path}: missing; give the CA key kept offline with --ca-key") from None
    except (ValueError, TypeError) as exc:
        raise CertError(f"{ca_key_path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey) or _spki(ca_key.public_key()) != _spki(ca.public_key()):
        raise CertError(f"{ca_key_path}: not the key of {folder / 'ca.crt'}")
    hosts = list(hosts) or _sans(_load_cert(folder / "server.pem"), folder / "server.pem")
    left = (ca.not_valid_after_utc - dt.datetime.now(dt.timezone.utc)).days
    if left < 1:
        raise CertError(f"{folder / 'ca.crt'}: expired or expiring today; a new CA is needed (fl certs --force)")
    server, server_key = _server_cert(ca, ca_key, hosts, min(days, left))   # never past the CA
    # two renames cannot be one: stopped between them, --check names the mismatch and a rerun mends it
    _write(folder / "server.key", _key_pem(server_key), private=True)
    _write(folder / "server.pem", server.public_bytes(serialization.Encoding.PEM))


def _spki(key: object) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)  # type: ignore[attr-defined]


def _sans(cert: x509.Certificate, path: Path) -> list[str]:
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise CertError(f"{path}: no subjectAltName; SuperNodes check the host name against it") from None
    return ([str(n) for n in sans.get_values_for_type(x509.DNSName)]
            + [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)])


def _load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        raise CertError(f"{path}: missing") from None
    except ValueError as exc:
        raise CertError(f"{path}: not a PEM certificate ({exc})") from None


def _warnings(folder: Path, ca: x509.Certificate, server: x509.Certificate, now: dt.datetime) -> list[str]:
    notes = []
    for path, cert, fix in ((folder / "server.pem", server, "renew it with `fedocr fl certs --renew-server`"),
                            (folder / "ca.crt", ca, "a new CA means new ca.crt files on every node")):
        left = cert.not_valid_after_utc - now
        if left < dt.timedelta(days=WARN_DAYS):
            notes.append(f"warning: {path} expires in {left.days} days ({cert.not_valid_after_utc:%Y-%m-%d}): {fix}")
    if (folder / "ca.key").exists() and (folder / "server.key").exists():
        notes.append(f"warning: {folder / 'ca.key'} sits beside server.key: keep it offline (renewal reads it "
                     f"back with --ca-key)")
    return notes


def check_bundle(folder: Path, hosts: Sequence[str] = ()) -> list[str]:
    """Check the bundle; return one line per item found fit (and a "warning:" line for each
    certificate that expires within WARN_DAYS, and for a CA key kept beside the server's), raise
    CertError on the first bad one. `hosts`: names the server certificate must cover."""
    now = dt.datetime.now(dt.timezone.utc)
    ca, server = _load_cert(folder / "ca.crt"), _load_cert(folder / "server.pem")
    found = []
    for path, cert in ((folder / "ca.crt", ca), (folder / "server.pem", server)):
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise CertError(f"{path}: not valid now (validity {cert.not_valid_before_utc:%Y-%m-%d} to "
                            f"{cert.not_valid_after_utc:%Y-%m-%d})")
    try:
        if not ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            raise CertError(f"{folder / 'ca.crt'}: basicConstraints CA is false")
    except x509.ExtensionNotFound:
        raise CertError(f"{folder / 'ca.crt'}: no basicConstraints extension") from None
    try:
        server.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise CertError(f"{folder / 'server.pem'}: issuer/signature does not match ca.crt") from None
    found.append(f"ok  ca.crt and server.pem (signed by the CA, valid until {server.not_valid_after_utc:%Y-%m-%d})")
    names = set(_sans(server, folder / "server.pem"))
    missing = [h for h in hosts if str(h) not in names]
    if missing:
        raise CertError(f"{folder / 'server.pem'}: subjectAltName lacks {', '.join(missing)} (has {', '.join(sorted(names))})")
    found.append(f"ok  server.pem subjectAltName: {', '.join(sorted(names))}")
    try:
        key = serialization.load_pem_private_key((folder / "server.key").read_bytes(), password=None)
    except FileNotFoundError:
        raise CertError(f"{folder / 'server.key'}: missing") from None
    except (ValueError, TypeError) as exc:
        raise CertError(f"{folder / 'server.key'}: not an unencrypted PEM private key ({exc})") from None
    if _spki(key.public_key()) != _spki(server.public_key()):
        raise CertError(f"{folder / 'server.key'}: does not match server.pem's public key (a renewal stopped "
                        f"between the two files? run `fedocr fl certs --renew-server` again)")
    found.append("ok  server.key matches server.pem")
    for pub in sorted((folder / NODE_DIR).glob("*.pub")):
        private = pub.with_suffix("")
        try:
            public_key = serialization.load_ssh_public_key(pub.read_bytes())
        except (ValueError, TypeError) as exc:
            raise CertError(f"{pub}: not an OpenSSH public key ({exc})") from None
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            raise CertError(f"{pub}: key type {type(public_key).__name__}, SuperNode auth needs an EC (NIST curve) key")
        if private.is_file():
            try:
                priv = serialization.load_ssh_private_key(private.read_bytes(), password=None)
            except (ValueError, TypeError) as exc:
                raise CertError(f"{private}: not an OpenSSH private key ({exc})") from None
            if priv.public_key().public_numbers() != public_key.public_numbers():  # type: ignore[union-attr]
                raise CertError(f"{private}: does not match {pub.name}")
        found.append(f"ok  node key {pub.stem} ({public_key.curve.name})")
    return found + _warnings(folder, ca, server, now)
