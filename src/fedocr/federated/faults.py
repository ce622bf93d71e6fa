"""Fault drills: make a named client crash, hang, or send a bad update in a given round.

Real federations lose nodes mid-round and receive broken updates; the server must survive both.
This run-config knob (`faults = "bank:crash@1,school:nan@2"`) lets the tests and the README drill
those paths through the real engine instead of a mock. It is empty in every normal run and is
recorded with the run's config, so a drilled run can never pass for a clean one.
"""
from __future__ import annotations

from dataclasses import dataclass

KINDS = ("crash", "hang", "nan", "huge", "charset")


@dataclass(frozen=True)
class Fault:
    client: str    # organisation / node name
    kind: str      # one of KINDS
    round: int


def parse_faults(spec: str) -> list[Fault]:
    """'bank:crash@1, school:hang@2' -> [Fault('bank', 'crash', 1), Fault('school', 'hang', 2)]."""
    faults = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        client, sep, rest = item.partition(":")
        kind, sep2, rnd = rest.partition("@")
        if not (sep and sep2 and client and rnd.isdigit()) or kind not in KINDS:
            raise ValueError(f"bad fault {item!r}: expected CLIENT:KIND@ROUND with KIND in {', '.join(KINDS)}")
        faults.append(Fault(client, kind, int(rnd)))
    return faults


def fault_for(spec: str, client: str, server_round: int) -> str | None:
    """The drill this client must act out in this round, if any."""
    for fault in parse_faults(spec):
        if fault.client == client and fault.round == server_round:
            return fault.kind
    return None
