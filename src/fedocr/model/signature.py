"""Signed model files: the federation signs what it publishes, a server serves only what verifies.

Ed25519 (the `cryptography` package) over the file's bytes, the signature in a detached
`FILE.sig` beside it. The private key stays with the federation's server (`fedocr fl signing-key`
writes it owner-only); `fedocr serve --trust KEY.pub` and `fedocr ocr --trust KEY.pub` refuse a
model without a signature, or with one that the trusted key did not make, before loading it.
"""
from __future__ import annotations

import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedocr.model.checkpoint import atomic_write

PRIVATE, PUBLIC = "signing.key", "signing.pub"


class SignatureError(ValueError):
    """A model file that must not be trusted (the message says why, in one line)."""


def signature_path(path: Path) -> Path:
    return path.with_name(path.name + ".sig")


def make_signing_key(folder: Path, force: bool = False) -> tuple[Path, Path]:
    """A new Ed25519 key pair in `folder`: signing.key (owner-only) and signing.pub. Refuses to
    replace an existing pair unless `force` (every server that trusts the old key would refuse the
    new files)."""
    private, public = folder / PRIVATE, folder / PUBLIC
    if not force and (private.exists() or public.exists()):
        raise FileExistsError(f"{private} or {public} exists; --force replaces the pair (servers that trust the "
                              f"old key will refuse models signed with the new one)")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())

    def write_private(tmp: Path) -> None:
        os.chmod(tmp, 0o600)
        tmp.write_bytes(pem)

    atomic_write(private, write_private)
    atomic_write(public, lambda tmp: tmp.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)))
    return private, public


def _load(path: Path, private: bool) -> Ed25519PrivateKey | Ed25519PublicKey:
    try:
        data = Path(path).read_bytes()
        key = (serialization.load_pem_private_key(data, password=None) if private
               else serialization.load_pem_public_key(data))
    except (OSError, ValueError, TypeError) as exc:
        raise SignatureError(f"{path}: not a readable {'private' if private else 'public'} key "
                             f"({type(exc).__name__})") from None
    if not isinstance(key, Ed25519PrivateKey if private else Ed25519PublicKey):
        raise SignatureError(f"{path}: not an Ed25519 key (make one with `fedocr fl signing-key`)")
    return key


def check_signing_key(key: Path) -> None:
    """Raise SignatureError unless `key` is a readable Ed25519 private key."""
    _load(key, private=True)


def sign_file(path: Path, key: Path) -> Path:
    """Write `path`.sig: the Ed25519 signature of the file's bytes with the private `key`."""
    private = _load(key, private=True)
    assert isinstance(private, Ed25519PrivateKey)
    signature = private.sign(Path(path).read_bytes())
    target = signature_path(Path(path))
    atomic_write(target, lambda tmp: tmp.write_bytes(signature))
    return target


def verify_file(path: Path, trusted: Path) -> None:
    """Raise SignatureError unless `path`.sig is the trusted key's signature of the file."""
    public = _load(trusted, private=False)
    assert isinstance(public, Ed25519PublicKey)
    sig = signature_path(Path(path))
    if not sig.is_file():
        raise SignatureError(f"{path}: unsigned (no {sig.name}); only models signed by {Path(trusted).name} are served")
    try:
        public.verify(sig.read_bytes(), Path(path).read_bytes())
    except InvalidSignature:
        raise SignatureError(f"{path}: its signature was not made by {Path(trusted).name} for this file "
                             f"(another key, or the file changed after signing)") from None
