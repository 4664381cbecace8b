"""The volume record of one identity (:meth:`~outpost.store.base.Store.volume_add`),
as plain data: the one update rule of the memory and sqlite stores (the
Redis store runs the same rule in Lua, ``_VOLUME`` in :mod:`.redis`).

A record is a small JSON object of fixed upper size::

    {"w": window index, "m": messages, "r": recipients, "n": new domains,
     "d": [domain hashes of the window, at most max_domains],
     "k": {domain hash: sequence, at most max_recent}, "q": sequence,
     "b": [baseline messages, recipients, domains, new domains],
     "s": since (whole seconds)}

When a message arrives in a later window than the record's, the record's
window is *closed*: each baseline ``b`` becomes ``b * decay + count * (1 -
decay)``, then is multiplied by ``decay`` once per empty window between,
and the counts start again.  A clock that went back counts in the record's
window (never rolls it back).  ``k`` keeps the most recently seen domains
(least recently seen dropped first); a domain not in it is *new*.
"""

from __future__ import annotations

import json
import math
from typing import Any, Optional, Sequence

from .base import VOLUME_HASH_MAX, VolumeCounts, VolumeSpec

Record = dict[str, Any]

#: What :meth:`~outpost.store.base.Store.reset` prefixes to a record's key
#: (``vol:user/identity``, :attr:`outpost.core.keys.Target.volume_reset`).
VOLUME_PREFIX = "vol:"


def check_domains(domains: Sequence[str], spec: VolumeSpec) -> list[str]:
    """The domain hashes a message counts: at most ``spec.max_domains``,
    each a non-empty string of at most :data:`VOLUME_HASH_MAX` characters
    (ValueError otherwise)."""
    out = list(dict.fromkeys(domains))[:spec.max_domains]
    for h in out:
        if not isinstance(h, str) or not 0 < len(h) <= VOLUME_HASH_MAX:
            raise ValueError(f"volume domain hash must be 1..{VOLUME_HASH_MAX} characters, got {h!r}")
    return out


def load(text: "Optional[str | bytes]") -> Optional[Record]:
    """A stored record, or None (absent or unreadable: the identity starts again)."""
    if text is None:
        return None
    try:
        rec = json.loads(text)
    except ValueError:
        return None
    if not isinstance(rec, dict) or not isinstance(rec.get("b"), list) or len(rec["b"]) != 4:
        return None
    return rec


def dump(rec: Record) -> str:
    return json.dumps(rec, separators=(",", ":"))


def apply(rec: Optional[Record], now: float, domains: Sequence[str], recipients: int,
          spec: VolumeSpec) -> tuple[Record, VolumeCounts]:
    """The record after one more message at ``now`` (``rec`` None: a new
    identity), and the counts it returns.  ``domains`` as :func:`check_domains` made them."""
    w = math.floor(now / spec.window)
    if rec is None:
        rec = {"w": w, "m": 0, "r": 0, "n": 0, "d": [], "k": {}, "q": 0, "b": [0.0] * 4, "s": math.floor(now)}
    else:
        rec = dict(rec, d=list(rec["d"]), k=dict(rec["k"]), b=list(rec["b"]))
    if w > rec["w"]:
        closed = (rec["m"], rec["r"], len(rec["d"]), rec["n"])
        d = spec.decay
        rec["b"] = [b * d + c * (1.0 - d) for b, c in zip(rec["b"], closed)]
        idle = w - rec["w"] - 1
        if idle > 0:
            f = d ** idle
            rec["b"] = [b * f for b in rec["b"]]
        rec.update(w=w, m=0, r=0, n=0, d=[])
    rec["m"] += 1
    rec["r"] += recipients
    window, recent = rec["d"], rec["k"]
    in_window = set(window)
    for h in domains:
        if h not in in_window and len(window) < spec.max_domains:
            window.append(h)
            in_window.add(h)
        if h not in recent:
            rec["n"] += 1
        rec["q"] += 1
        recent.pop(h, None)
        recent[h] = rec["q"]
    while len(recent) > spec.max_recent:     # the least recently seen is first (insertion order)
        del recent[next(iter(recent))]
    b = rec["b"]
    return rec, VolumeCounts(messages=rec["m"], recipients=rec["r"], domains=len(window),
                             new_domains=rec["n"], baseline=(b[0], b[1], b[2], b[3]),
                             since=rec["s"])
