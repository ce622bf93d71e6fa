"""Homomorphic encryption of updates: CKKS (Cheon et al. 2017) through TenSEAL (Benaissa et al. 2021).

`secure.method = "ckks"`. Each node weights its delta by its example count, flattens the float
tensors (in name order) into one vector and encrypts it in chunks of `poly_degree / 2` slots under
the federation's CKKS key; the server adds the ciphertexts with a public-only context (it cannot
decrypt), then asks one node to decrypt the sum and divides by the claimed examples (in the
clear). Integer buffers (BatchNorm's step counter) travel in the clear.

`he.top-k` sends only the entries of an index set the server chose and every node shares: the
largest entries of the last applied global step (round 1: a random set drawn from the run seed);
what a node leaves out is kept on its disk and added next round (error feedback). The server then
learns the index set (it chose it), never the values.

Trust model (shared-key CKKS; TenSEAL has no threshold decryption, and OpenFHE's multiparty
CKKS ships no wheel for this Python): every node holds the same secret key, made once by the
operator (`fedocr fl he-keys`) and handed to the nodes out of band like their TLS keys; the server
holds only the public context. The server sees ciphertexts, each node's claimed example count and
metrics, and the decrypted sum; a node sees only the sum it is asked to decrypt; an eavesdropper
sees ciphertexts. A node colluding with the server can decrypt every other node's update.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from fedocr.federated.pipeline.checks import is_float
from fedocr.federated.pipeline.settings import StepConfig, bad
from fedocr.federated.pipeline.types import StepContext, Update, Weights

SECRET, PUBLIC = "secret.tenseal", "public.tenseal"
CIPHER = "he.ct."        # tensor-name prefix of one ciphertext (uint8 bytes)
INDEX = "he-index"       # the task hint: packed bits of the index set (Top-K), in float-entry order
INDEX_STEP = "ckks-index"   # the server transform that keeps the next index set in its state
COEFF_BITS = {4096: [40, 20, 40], 8192: [60, 40, 60], 16384: [60, 40, 40, 60]}
SCALE_BITS = {4096: 20, 8192: 40, 16384: 40}


@dataclass(frozen=True)
class HeConfig(StepConfig):
    KEYS: ClassVar[dict[str, str]] = {"secure.method": "method", "out-dir": "out_dir", "he.keys": "keys",
                                       "he.top-k": "top_k", "he.poly-degree": "poly_degree"}

    method: str = "none"    # `secure.method` (checked by SecureConfig): the steps are built for "ckks"
    out_dir: str = "fl-run"
    keys: str = ""          # `he.keys`: folder of secret.tenseal (nodes) / public.tenseal (server); "": OUT/he-keys
    top_k: float = 0.0      # `he.top-k`: share of entries sent, at the server's shared index set (0: all)
    poly_degree: int = 8192  # `he.poly-degree`: CKKS ring dimension (slots = half of it)

    def __post_init__(self) -> None:
        if not 0 <= self.top_k < 1:
            raise bad("he.top-k", "must be in [0, 1) (0: every entry)")
        if self.poly_degree not in COEFF_BITS:
            raise bad("he.poly-degree", f"must be one of {', '.join(map(str, COEFF_BITS))}")

    @property
    def folder(self) -> Path:
        return Path(self.keys) if self.keys else Path(self.out_dir) / "he-keys"

    @property
    def slots(self) -> int:
        return self.poly_degree // 2


# -- keys and ciphertexts -------------------------------------------------------------------------
def make_keys(folder: Path, poly_degree: int = 8192) -> tuple[Path, Path]:
    """A fresh CKKS key: the secret context for the nodes (mode 0600) and the public one for the server."""
    import tenseal as ts

    ctx = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=poly_degree, coeff_mod_bit_sizes=COEFF_BITS[poly_degree])
    ctx.global_scale = 2.0 ** SCALE_BITS[poly_degree]
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, secret in ((SECRET, True), (PUBLIC, False)):
        path, tmp = folder / name, folder / f".{name}.tmp"
        tmp.write_bytes(ctx.serialize(save_public_key=True, save_secret_key=secret, save_galois_keys=False,
                                      save_relin_keys=False))
        os.chmod(tmp, 0o600 if secret else 0o644)
        os.replace(tmp, path)
        written.append(path)
    return written[0], written[1]


def load_context(path: Path, need_secret: bool) -> Any:
    import tenseal as ts

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no CKKS key here; make one with `fedocr fl he-keys --out {path.parent}` "
                                f"and give the nodes {SECRET}, the server {PUBLIC}")
    ctx = ts.context_from(path.read_bytes())
    if need_secret and not ctx.is_private():
        raise ValueError(f"{path}: a public context cannot decrypt (a node needs {SECRET})")
    return ctx


def float_keys(tensors: Mapping[str, np.ndarray]) -> list[str]:
    return sorted(k for k, v in tensors.items() if is_float(v))


def encrypt(vector: np.ndarray, ctx: Any, slots: int) -> list[bytes]:
    import tenseal as ts

    return [ts.ckks_vector(ctx, vector[i:i + slots].tolist()).serialize() for i in range(0, len(vector), slots)]


def add(ciphertexts: Sequence[Sequence[bytes]], ctx: Any) -> list[bytes]:
    """The element-wise sum of several nodes' ciphertext lists (public context: no decryption)."""
    import tenseal as ts

    total = [ts.ckks_vector_from(ctx, c) for c in ciphertexts[0]]
    for other in ciphertexts[1:]:
        if len(other) != len(total):
            raise ValueError(f"{len(other)} ciphertexts, expected {len(total)}")
        for i, c in enumerate(other):
            total[i] += ts.ckks_vector_from(ctx, c)
    return [t.serialize() for t in total]


def decrypt(ciphertexts: Sequence[bytes], ctx: Any, length: int) -> np.ndarray:
    import tenseal as ts

    values = np.concatenate([np.asarray(ts.ckks_vector_from(ctx, c).decrypt(), dtype=np.float64) for c in ciphertexts])
    if len(values) < length:
        raise ValueError(f"the ciphertexts hold {len(values)} values, expected {length}")
    return values[:length]


def as_arrays(ciphertexts: Sequence[bytes]) -> Weights:
    return {f"{CIPHER}{i:05d}": np.frombuffer(c, dtype=np.uint8) for i, c in enumerate(ciphertexts)}


def from_arrays(tensors: Mapping[str, np.ndarray]) -> list[bytes]:
    return [tensors[k].tobytes() for k in sorted(k for k in tensors if k.startswith(CIPHER))]


# -- the shared index set (Top-K) -----------------------------------------------------------------
def index_set(step: Mapping[str, np.ndarray], fraction: float) -> np.ndarray:
    """Positions (in float-entry order) of the largest |entries| of a global step: the next round's index set."""
    flat = np.concatenate([np.abs(step[k]).ravel() for k in float_keys(step)])
    k = max(1, math.ceil(fraction * flat.size))
    return np.sort(np.argpartition(flat, flat.size - k)[flat.size - k:])


def random_index_set(size: int, fraction: float, seed: int) -> np.ndarray:
    k = max(1, math.ceil(fraction * size))
    return np.sort(np.random.default_rng([seed, 0x4E]).choice(size, size=k, replace=False))


def pack(index: np.ndarray, size: int) -> np.ndarray:
    mask = np.zeros(size, dtype=bool)
    mask[index] = True
    return np.packbits(mask)


def unpack(packed: np.ndarray, size: int) -> np.ndarray:
    return np.flatnonzero(np.unpackbits(packed, count=size))


# -- steps ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HeEncrypt:
    """Client step: weight by examples, flatten, keep the shared index set (error feedback on the
    rest), encrypt. Integer buffers stay in the clear, weighted alike."""
    config: HeConfig
    name: str = "ckks"
    hides_updates: bool = True

    def describe(self) -> str:
        sent = f"the {self.config.top_k:.0%} at the server's shared index set (error feedback)" if self.config.top_k \
            else "every entry"
        return f"CKKS-encrypt {sent}, weighted by examples, n={self.config.poly_degree} (TenSEAL; shared key)"

    def __call__(self, update: Update, ctx: StepContext) -> Update:
        ckks = load_context(self.config.folder / SECRET, need_secret=True)
        keys = float_keys(update.tensors)
        vector = np.concatenate([update.tensors[k].ravel().astype(np.float64) for k in keys]) * update.examples
        if self.config.top_k:
            residual = ctx.state.get("residual")
            if residual is not None and len(residual) == len(vector):
                vector = vector + residual
            chosen = unpack(np.asarray(ctx.task[INDEX]), len(vector))
            ctx.state["residual"] = vector.copy()
            ctx.state["residual"][chosen] = 0.0
            vector = vector[chosen]
        ciphertexts = encrypt(vector, ckks, self.config.slots)
        clear = {k: np.asarray(v * update.examples) for k, v in update.tensors.items() if not is_float(v)}
        return update.with_tensors({**as_arrays(ciphertexts), **clear}).noted(
            self.name, values=len(vector), ciphertexts=len(ciphertexts),
            cipher_bytes=sum(len(c) for c in ciphertexts))


@dataclass(frozen=True)
class HeSum:
    """Server decoding step, listed for the dry run: the round's ciphertexts are added (public
    context), one node decrypts the sum, and the steps below see the example-weighted mean."""
    config: HeConfig
    name: str = "ckks"
    hides_updates: bool = True

    def describe(self) -> str:
        return "add the CKKS ciphertexts (public context), one node decrypts the sum; the steps below see the mean"

    def __call__(self, update: Update, ctx: StepContext) -> Update:
        return update


@dataclass(frozen=True)
class NextIndexSet:
    """Server transform (with he.top-k): the largest entries of this round's global step become the
    index set every node sends next round (kept, packed, in the step's state)."""
    config: HeConfig
    name: str = INDEX_STEP

    def describe(self) -> str:
        return f"the next round's shared index set: the largest {self.config.top_k:.0%} entries of this step"

    def __call__(self, step: Weights, ctx: StepContext) -> Weights:
        size = sum(step[k].size for k in float_keys(step))
        ctx.state.update(packed=pack(index_set(step, self.config.top_k), size), size=size)
        return step


def task_index(config: HeConfig, state: Mapping[str, Any], weights: Mapping[str, np.ndarray], seed: int) -> np.ndarray:
    """The packed index set a round's task carries: the last applied step's, else a random one."""
    size = sum(weights[k].size for k in float_keys(weights))
    if state.get("size") == size:
        return np.asarray(state["packed"])
    return pack(random_index_set(size, config.top_k, seed), size)


def transform_steps(config: HeConfig) -> list[Any]:
    return [NextIndexSet(config)] if config.method == "ckks" and config.top_k else []


def client_steps(config: HeConfig) -> list[Any]:
    return [HeEncrypt(config)] if config.method == "ckks" else []


def decode_steps(config: HeConfig) -> list[Any]:
    return [HeSum(config)] if config.method == "ckks" else []
