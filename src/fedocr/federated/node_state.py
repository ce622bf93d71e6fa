"""A node's client-step state on its own disk (error-feedback residuals, a personal head).

Flower's `context.state` lives in SuperNode memory only: a restarted node would lose its
residuals (and send what it left out twice or never) or its personal head. So the state is an
.npz file per run and client, written atomically after every round; it records the run id, and
a file of another run is ignored rather than mixed in.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from fedocr.federated.pipeline.build import States
from fedocr.model.checkpoint import atomic_write

SEP = "|"
RUN_KEY = "__run_id__"


def default_state_path(out_dir: Path, client: str) -> Path:
    """Where a node keeps its state when its operator names no `state-dir`: under the run's out-dir
    (in simulation that is every node's, which lets the final table read the personal models)."""
    return out_dir / "node-state" / f"{client}.npz"


def load_node_state(path: Path, run_id: str) -> States:
    """The steps' state saved for `run_id` at `path`, or empty state (new run, other run, unreadable)."""
    if not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as data:
            if RUN_KEY not in data.files or str(data[RUN_KEY]) != run_id:
                return {}
            states: States = {}
            for name in data.files:
                if name == RUN_KEY:
                    continue
                step, key, *tensor = name.split(SEP, 2)
                slot = states.setdefault(step, {})
                if tensor:
                    slot.setdefault(key, {})[tensor[0]] = data[name]
                else:
                    slot[key] = data[name]
            return states
    except (OSError, ValueError):
        return {}


def save_node_state(path: Path, run_id: str, states: States) -> None:
    """Write the steps' state (values: arrays, or dicts of named arrays) atomically."""
    flat: dict[str, np.ndarray] = {RUN_KEY: np.array(run_id)}
    for step, slot in states.items():
        for key, value in slot.items():
            if isinstance(value, dict):
                flat.update({SEP.join((step, key, name)): np.asarray(a) for name, a in value.items()})
            else:
                flat[SEP.join((step, key))] = np.asarray(value)

    def write(tmp: Path) -> None:
        with tmp.open("wb") as f:  # a file object: np.savez would add .npz to a bare name
            np.savez(f, **flat)

    atomic_write(path, write)
