"""The MTA's quarantine, seen from Outpost.

Outpost quarantines with the milter ``quarantine()`` action: Postfix puts the
message in its *hold* queue, Sendmail in its quarantine queue.  These
functions list, release and delete held messages through the MTA's own tools
(``postqueue -j``, ``postcat``, ``postsuper -H`` / ``-d``), so nothing here
touches queue files directly.

With a recorder (``quarantine.training_dir``: :class:`~outpost.training.DecisionSpool`)
a released message is kept as ham and a deleted one, copied before it goes,
as spam, for ``outpost train --from-quarantine``.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from ..training import DecisionSpool

_QUEUE_ID = re.compile(r"^[0-9A-Za-z]{6,32}$")


class QuarantineError(RuntimeError):
    pass


@dataclass(frozen=True)
class Held:
    queue_id: str
    sender: str
    recipients: tuple[str, ...]
    arrival: int
    size: int
    outpost: tuple[tuple[str, str], ...]        # X-Outpost-* headers of the message


def _run(argv: list[str], timeout: float = 30.0) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as exc:
        raise QuarantineError(f"{argv[0]} not found: is Postfix installed?") from exc
    except subprocess.TimeoutExpired as exc:
        raise QuarantineError(f"{' '.join(argv)} did not finish in {timeout}s") from exc
    if done.returncode != 0:
        raise QuarantineError(f"{' '.join(argv)} failed: {done.stderr.strip() or done.returncode}")
    return done.stdout


def _check_id(queue_id: str) -> str:
    if not _QUEUE_ID.match(queue_id):
        raise QuarantineError(f"'{queue_id}' is not a Postfix queue id")
    return queue_id


class PostfixQuarantine:
    """The hold queue of one Postfix instance (``config_dir``: its main.cf dir)."""

    def __init__(self, config_dir: str = "/etc/postfix",
                 recorder: Optional["DecisionSpool"] = None) -> None:
        self.config_dir = config_dir
        self.recorder = recorder

    def _cmd(self, tool: str, *args: str) -> list[str]:
        return [tool, "-c", self.config_dir, *args]

    def headers(self, queue_id: str) -> list[tuple[str, str]]:
        text = _run(self._cmd("postcat", "-h", "-q", _check_id(queue_id)))
        out: list[tuple[str, str]] = []
        for line in text.splitlines():
            if line[:1] in (" ", "\t") and out:
                out[-1] = (out[-1][0], out[-1][1] + " " + line.strip())
            elif ":" in line:
                name, _, value = line.partition(":")
                out.append((name.strip(), value.strip()))
        return out

    def list(self) -> list[Held]:
        held = []
        for line in _run(self._cmd("postqueue", "-j")).splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            if item.get("queue_name") != "hold":
                continue
            qid = item["queue_id"]
            try:
                ours = tuple((n, v) for n, v in self.headers(qid) if n.lower().startswith("x-outpost-"))
            except QuarantineError:
                ours = ()                      # released or deleted meanwhile
            held.append(Held(queue_id=qid, sender=item.get("sender", ""),
                             recipients=tuple(r["address"] for r in item.get("recipients", [])),
                             arrival=int(item.get("arrival_time", 0)),
                             size=int(item.get("message_size", 0)), outpost=ours))
        return held

    def message(self, queue_id: str) -> bytes:
        """The held message as it would be delivered (header and body)."""
        argv = self._cmd("postcat", "-h", "-b", "-q", _check_id(queue_id))
        try:
            done = subprocess.run(argv, capture_output=True, timeout=30.0)
        except (FileNotFoundError, subprocess.TimeoutExpired) as exc:
            raise QuarantineError(f"{' '.join(argv)}: {exc}") from exc
        if done.returncode != 0:
            raise QuarantineError(f"{' '.join(argv)} failed: "
                                  f"{done.stderr.decode(errors='replace').strip() or done.returncode}")
        return done.stdout

    def _record(self, queue_id: str, spam: bool) -> None:
        """Keep the decision for training (before the message leaves the hold queue)."""
        if self.recorder is None:
            return
        from ..training import TrainingError
        try:
            self.recorder.record(queue_id, self.message(queue_id), spam)
        except TrainingError as exc:
            raise QuarantineError(f"{exc}; {queue_id} left in the hold queue (fix the folder, or "
                                  f"act without -c / quarantine.training_dir)") from None

    def release(self, queue_id: Optional[str] = None) -> tuple[str, ...]:
        """Release one held message (or all with None) back to delivery;
        the queue ids released."""
        if queue_id is not None:
            self._record(_check_id(queue_id), False)
            _run(self._cmd("postsuper", "-H", queue_id))
            return (queue_id,)
        if self.recorder is None:
            _run(self._cmd("postsuper", "-H", "ALL"))
            return ("ALL",)
        done = []
        for held in self.list():                 # each one recorded, then released
            self._record(held.queue_id, False)
            _run(self._cmd("postsuper", "-H", held.queue_id))
            done.append(held.queue_id)
        return tuple(done)

    def delete(self, queue_id: str) -> None:
        self._record(_check_id(queue_id), True)
        _run(self._cmd("postsuper", "-d", queue_id, "hold"))
