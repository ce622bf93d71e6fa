"""Synthetic organisations for simulation, and each client's private data.

`three-orgs` and `four-orgs` map organisations to the data part's domain presets
(`fedocr.data.presets`) and need the full vocabulary, so they are meant to start from the
shipped base model. On top of its domain, each organisation has its own device (`data.devices`: the
hospital's dot-matrix slips, the bank's faxes, the school's handwriting, the courier's thermal
labels) on most of its lines. The public pretraining corpus never shows those, so the base model
reads them badly, one organisation alone learns only its own, and federation is what teaches
each organisation the others' (the "others' data" column of bench/fl_three_orgs.py).
`three-orgs-mini` is the same story shrunk to fit a from-scratch tiny model in minutes on a
laptop CPU: the 22-character `mini` vocabulary, each organisation writing digits plus its own
hanzi (hospital 医院日期, bank 银行金额, school 学校中国人民) under its own image conditions. That
keeps the organisations non-IID in what they write and how it looks, which is what makes a model
trained on one organisation fail on the others.

A federation is a list of nodes. In the presets above each organisation runs one node under its
own name; in `ten-branches` (and `ten-branches-mini`) organisations run several branches
(`bank-2`), each with its organisation's preset and device, its own data and an uneven size
(a multiple of `lines-per-client`), so that 1-2 malicious nodes of 10 is a realistic question
and robust rules such as Krum (n >= 2f + 3) have enough nodes to work with. `many-clients`
(and `many-clients-mini`, `-mini-10`, `-mini-1000` for the scale benchmark) is a consortium or a
device fleet: 100 small nodes over the organisations with a long tail of sizes (a few large
sites, most with the smallest share), meant to be sampled at 30-50% per round. `hidden-groups`
(and `-mini`) is six sites of two kinds that their names do not reveal, three hospital-like and
three school-like, for clustered federated learning to find; `one-kind-mini` is six hospital-like
sites, the case where it should find none.

Data seeds are disjoint per node and per split (train / test / validation), so no line of a
test set is ever trained on.
"""
from __future__ import annotations

import bisect
import functools
import random
from dataclasses import dataclass
from pathlib import Path

from fedocr.charset import Charset, default_charset
from fedocr.data import PRESETS, ConcatLines, InMemoryLines, LineDataset, SubsetLines, SyntheticLines, open_dataset
from fedocr.data.presets import Preset, with_device
from fedocr.data.render import Conditions

MINI_ALPHABET = "0123456789中国人民银行金额日期医院学校"

_SPLIT_SEED = {"train": 1, "test": 2, "val": 3, "root": 4}


def _mini_line(hanzi: str, rng: random.Random) -> str:
    """3-10 characters, about half of them the organisation's own hanzi."""
    return "".join(rng.choice(hanzi) if rng.random() < 0.5 else rng.choice("0123456789")
                   for _ in range(rng.randint(3, 10)))


_MINI_CLEAN = dict(low_contrast=0.0, blur=0.1, noise=0.1, jpeg=0.0, rotation_deg=0.5, perspective=0.0, rules=0.0,
                   stains=0.0, uneven_light=0.0)
MINI_PRESETS: dict[str, Preset] = {
    "hospital": Preset("hospital-mini", functools.partial(_mini_line, "医院日期"), {"sans": 0.6, "serif": 0.4},
                       Conditions(font_px=(28, 36), **{**_MINI_CLEAN, "low_contrast": 0.4, "blur": 0.2}),
                       "digits + 医院日期 on low-contrast scans"),
    "bank": Preset("bank-mini", functools.partial(_mini_line, "银行金额"), {"serif": 0.7, "sans": 0.3},
                   Conditions(font_px=(28, 36), **{**_MINI_CLEAN, "stamp": 0.2, "noise": 0.4}),
                   "digits + 银行金额 with stamps and noise"),
    "school": Preset("school-mini", functools.partial(_mini_line, "学校中国人民"), {"kai": 0.7, "sans": 0.3},
                     Conditions(font_px=(28, 36), **{**_MINI_CLEAN, "rotation_deg": 2.0}),
                     "digits + 学校中国人民 in Kaiti, slightly rotated"),
}


def _mini_public(rng: random.Random) -> str:
    return _mini_line("".join(MINI_ALPHABET[10:]), rng)


MINI_PUBLIC = Preset("public-mini", _mini_public, {"sans": 0.4, "serif": 0.3, "kai": 0.3},
                     Conditions(font_px=(28, 36), **{**_MINI_CLEAN, "low_contrast": 0.15, "stamp": 0.05}),
                     "the mini vocabulary in every organisation's style (server validation)")


# Each organisation's own printer or scanner (data.devices), on most but not all of its lines:
# what the public pretraining corpus never shows, and so what federated fine-tuning is for.
ORG_DEVICES = {"hospital": "dot-matrix", "bank": "fax", "school": "handwriting", "logistics": "thermal"}
DEVICE_RATE = 0.75


@dataclass(frozen=True)
class Node:
    """One simulated node: a branch of an organisation (its preset and device) with its own data."""
    name: str          # the client's name in reports (the organisation's own when it runs one node)
    org: str           # whose preset and device its lines have
    size: int = 1      # its training lines: size x lines-per-client


@dataclass(frozen=True)
class Federation:
    name: str
    nodes: tuple[Node, ...]   # in partition-id order; a node's position also seeds its data
    mini: bool                # uses the 22-character vocabulary and the mini presets

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(node.name for node in self.nodes)

    def node(self, name: str) -> Node:
        return self.nodes[self.names.index(name)]

    def preset(self, org: str) -> Preset:
        if self.mini:
            return MINI_PRESETS[org]
        return with_device(PRESETS[org], ORG_DEVICES[org], DEVICE_RATE)

    def public_preset(self) -> Preset:
        return MINI_PUBLIC if self.mini else PRESETS["public"]


def _one_node_each(name: str, orgs: tuple[str, ...], mini: bool) -> Federation:
    return Federation(name, tuple(Node(org, org) for org in orgs), mini)


def _branches(name: str, sizes: dict[str, tuple[int, ...]], mini: bool) -> Federation:
    """Organisation `org` runs one branch `org-1`, `org-2`, ... per size."""
    return Federation(name, tuple(Node(f"{org}-{i}", org, size) for org, own in sizes.items()
                                  for i, size in enumerate(own, 1)), mini)


def _long_tail(name: str, orgs: tuple[str, ...], n: int, mini: bool, head: int = 12) -> Federation:
    """`n` nodes, the k-th largest `head / k` times the smallest (Zipf, at least 1), organisations
    taking turns so each has large and small nodes: `hospital-7` is the hospital's 7th node."""
    counts = dict.fromkeys(orgs, 0)
    nodes = []
    for rank in range(1, n + 1):
        org = orgs[(rank - 1) % len(orgs)]
        counts[org] += 1
        nodes.append(Node(f"{org}-{counts[org]}", org, max(1, round(head / rank))))
    return Federation(name, tuple(nodes), mini)


def _hidden_groups(name: str, orgs: tuple[str, ...], per_org: int, mini: bool) -> Federation:
    """`per_org` nodes of each organisation, named `site-1`, `site-2`, ... in turn, so a node's
    name does not say its group (clustering must find it; `Node.org` is the truth to score by)."""
    return Federation(name, tuple(Node(f"site-{i + 1}", orgs[i % len(orgs)]) for i in range(per_org * len(orgs))), mini)


FEDERATIONS: dict[str, Federation] = {
    "three-orgs": _one_node_each("three-orgs", ("hospital", "bank", "school"), mini=False),
    "four-orgs": _one_node_each("four-orgs", ("hospital", "bank", "school", "logistics"), mini=False),
    "three-orgs-mini": _one_node_each("three-orgs-mini", ("hospital", "bank", "school"), mini=True),
    # Uneven on purpose: a head office with three times a small branch's lines.
    "ten-branches": _branches("ten-branches", {"hospital": (3, 1, 1), "bank": (2, 1, 1), "school": (2, 1),
                                               "logistics": (2, 1)}, mini=False),
    "ten-branches-mini": _branches("ten-branches-mini", {"hospital": (3, 1, 1), "bank": (2, 1, 1),
                                                         "school": (2, 1, 1, 1)}, mini=True),
    # Six nodes of two hidden kinds: hospital-like (dot-matrix slips) and school-like (handwriting).
    "hidden-groups": _hidden_groups("hidden-groups", ("hospital", "school"), 3, mini=False),
    "hidden-groups-mini": _hidden_groups("hidden-groups-mini", ("hospital", "school"), 3, mini=True),
    # Six sites of one kind: no hidden groups (a clustered run that finds k should not split).
    "one-kind-mini": _hidden_groups("one-kind-mini", ("hospital",), 6, mini=True),
    "many-clients": _long_tail("many-clients", ("hospital", "bank", "school", "logistics"), 100, mini=False),
    **{name: _long_tail(name, ("hospital", "bank", "school"), n, mini=True)
       for name, n in (("many-clients-mini", 100), ("many-clients-mini-10", 10), ("many-clients-mini-1000", 1000))},
}


def get_federation(name: str) -> Federation:
    try:
        return FEDERATIONS[name]
    except KeyError:
        raise ValueError(f"unknown federation {name!r}; choose one of {', '.join(FEDERATIONS)}") from None


def named_charset(name: str) -> Charset:
    """'default' (6,946 classes) or 'mini' (22 characters + blank)."""
    return Charset(list(MINI_ALPHABET)) if name == "mini" else default_charset()


def _seed(seed: int, node_index: int, split: str) -> int:
    return 100_003 * seed + 1_009 * node_index + _SPLIT_SEED[split]


# Enough for every node a simulation actor serves in a many-clients round, without re-rendering.
@functools.lru_cache(maxsize=128)
def org_lines(federation: str, node: str, split: str, n: int, seed: int, charset_version: str,
              charset: Charset) -> InMemoryLines:
    """A node's lines of one split, rendered once per process (Ray actors and the simulate driver
    reuse them across rounds): `n` test or validation lines, or `n` x the node's size training
    lines (`lines-per-client` is the size of the smallest branch)."""
    fed = get_federation(federation)
    index = fed.names.index(node)
    count = n * fed.nodes[index].size if split == "train" else n
    return InMemoryLines(SyntheticLines(fed.preset(fed.nodes[index].org), count, seed=_seed(seed, index, split),
                                        charset=charset))


def synthetic_org_data(federation: str, partition_id: int, split: str, n: int, seed: int,
                       charset: Charset) -> tuple[str, InMemoryLines]:
    """(node name, its lines of `split`, as `org_lines` counts them) for a simulation partition id."""
    fed = get_federation(federation)
    if not 0 <= partition_id < len(fed.nodes):
        raise ValueError(f"partition {partition_id} outside {federation} ({len(fed.nodes)} nodes)")
    node = fed.nodes[partition_id].name
    return node, org_lines(federation, node, split, n, seed, charset.version, charset)


@functools.lru_cache(maxsize=4)
def public_lines(federation: str, n: int, seed: int, charset_version: str, charset: Charset,
                 split: str = "val") -> InMemoryLines:
    """The server's own lines of the federation's `public` mix: its validation set ("val"), or
    the root set it trains on for FLTrust ("root"), drawn apart from each other."""
    preset = get_federation(federation).public_preset()
    return InMemoryLines(SyntheticLines(preset, n, seed=_seed(seed, 99, split), charset=charset))


# Member lines are seeded as if by nodes past any preset's last (many-clients-mini-1000 has 1,000).
_MEMBERS_INDEX = 5_000


@functools.lru_cache(maxsize=4)
def member_lines(federation: str, n: int, seed: int, charset_version: str, charset: Charset) -> InMemoryLines:
    """A validation set in the members' own styles: about n / k lines from each of the federation's
    k organisations, with its device, drawn apart from every node's train and test lines, as if each
    member had given the server a few consented lines. What the server validates on decides what a
    round, the best round and each node's contribution are judged by; the `public` mix never shows
    the members' devices, so a model they improve can look unchanged on it."""
    fed = get_federation(federation)
    orgs = list(dict.fromkeys(node.org for node in fed.nodes))
    parts = ConcatLines([SyntheticLines(fed.preset(org), n // len(orgs) + (k < n % len(orgs)),
                                        seed=_seed(seed, _MEMBERS_INDEX + k, "val"), charset=charset)
                         for k, org in enumerate(orgs)])
    # Interleaved, so that the first m lines (what a contribution probe reads) hold every member alike.
    order = sorted(range(n), key=lambda i: (i - parts.offsets[bisect.bisect_right(parts.offsets, i) - 1], i))
    return InMemoryLines(SubsetLines(parts, order, f"members-{federation}"))


def folder_data(path: str | Path) -> LineDataset:
    """A deployment node's own data (a folder with labels.tsv, LMDB or a label file), read once."""
    return InMemoryLines(open_dataset(Path(path)))
