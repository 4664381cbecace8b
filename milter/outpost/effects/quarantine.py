"""The MTA's quarantine, seen from Outpost.

Outpost quarantines with the milter ``quarantine()`` action: Postfix puts the
message in its *hold* queue, Sendmail in its quarantine queue.  These
functions list, release and delete held messages through the MTA's own tools
(``postqueue -j``, ``postcat``, ``postsuper -H`` / ``-d``), so nothing here
touches queue files directly.

With a recorder (``quarantine.training_dir``: :class:`~outpost.training.DecisionSpool`)
a released message is kept as ham and a deleted one, copied before it goes,
as spam, for ``outpost train --from-quarantine``.

``postsuper`` runs only as root (Postfix refuses anyone else, even the
``postfix`` user).  A process that is not root (the panel, as the user
``outpost``) releases and deletes through a *request directory* instead
(:class:`RequestQueue`): it creates an empty file ``requests/ACTION.QUEUEID``
and waits for ``results/ACTION.QUEUEID.ok`` or ``.failed``; a root process
(``outpost quarantine apply``, started by ``outpost-quarantine.path`` while
``requests/`` is not empty) runs ``postsuper`` for each request
(:func:`apply_requests`), and keeps the copies for training when it has a
recorder.  The root side takes nothing from those files but
their names, which must be ``release.ID`` or ``delete.ID`` with a valid queue
id; it writes results with ``O_EXCL | O_NOFOLLOW``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

if TYPE_CHECKING:
    from ..training import DecisionSpool

_QUEUE_ID = re.compile(r"^[0-9A-Za-z]{6,32}$")
_REQUEST = re.compile(r"^(release|delete)\.([0-9A-Za-z]{6,32})$")
#: Requests one ``apply_requests`` run takes at most (the rest: the next run).
MAX_REQUESTS = 1000
#: Longest error text kept in a ``.failed`` result.
MAX_RESULT = 500

log = logging.getLogger("outpost.quarantine")


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


class RequestQueue:
    """The request directory of an unprivileged process (see the module
    docstring): ``requests/`` and ``results/`` under ``path``."""

    def __init__(self, path: str, timeout: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.requests = os.path.join(path, "requests")
        self.results = os.path.join(path, "results")
        self.timeout = timeout
        self._clock = clock

    def ask(self, action: str, queue_id: str) -> None:
        """Ask for ``action`` (release or delete) of ``queue_id`` and wait
        until the root side has done it (QuarantineError when it failed or
        did not answer within ``timeout``: the request is then withdrawn)."""
        name = f"{action}.{_check_id(queue_id)}"
        assert _REQUEST.match(name)
        try:
            for d in (self.requests, self.results):
                os.makedirs(d, mode=0o750, exist_ok=True)
            for suffix in (".ok", ".failed"):                # an old answer of the same request
                _unlink(os.path.join(self.results, name + suffix))
            fd = os.open(os.path.join(self.requests, name),
                         os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o640)
            os.close(fd)
        except OSError as exc:
            raise QuarantineError(f"cannot write the request {name} in {self.requests}: "
                                  f"{exc.strerror or exc}") from None
        deadline = self._clock() + self.timeout
        while True:
            answer = self._answer(name)
            if answer is not None:
                ok, text = answer
                if not ok:
                    raise QuarantineError(text or f"{action} of {queue_id} failed")
                return
            if self._clock() >= deadline:
                withdrawn = _unlink(os.path.join(self.requests, name))
                raise QuarantineError(
                    f"{action} of {queue_id} was not applied within {self.timeout:g}s"
                    + (" (request withdrawn): is outpost-quarantine.path running?" if withdrawn
                       else " (it is being applied: check the hold queue)"))
            time.sleep(0.05)

    def _answer(self, name: str) -> Optional[tuple[bool, str]]:
        for suffix, ok in ((".ok", True), (".failed", False)):
            path = os.path.join(self.results, name + suffix)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            except FileNotFoundError:
                continue
            except OSError as exc:
                return False, f"cannot read {path}: {exc.strerror or exc}"
            with os.fdopen(fd, "rb") as f:
                text = f.read(MAX_RESULT).decode("utf-8", "replace").strip()
            _unlink(path)
            return ok, text
        return None


def _unlink(path: str, dir_fd: Optional[int] = None) -> bool:
    try:
        os.unlink(path, dir_fd=dir_fd)
        return True
    except FileNotFoundError:
        return False


def _open_dir(path: str) -> int:
    """A descriptor of directory ``path``, opened one component at a time
    without following any symbolic link (OSError for a link or a file):
    the user who writes requests owns these directories, and the root side
    must not be led elsewhere."""
    if not os.path.isabs(path):
        raise ValueError(f"{path}: not an absolute path")
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    fd = os.open("/", flags)
    try:
        for part in [p for p in path.split("/") if p]:
            nxt = os.open(part, flags, dir_fd=fd)
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def apply_requests(path: str, quarantine: "PostfixQuarantine") -> list[tuple[str, str]]:
    """Run as root: apply every request under ``path/requests`` (at most
    :data:`MAX_REQUESTS`; names that are not ``release.ID`` or ``delete.ID``
    are removed unread) until none is left, and answer each in
    ``path/results``.  Returns ``[(request, error or "")]``.  OSError when
    a directory is missing or is (under) a symbolic link."""
    if quarantine.requests is not None:
        raise ValueError("apply_requests needs a quarantine that runs postsuper itself")
    done: list[tuple[str, str]] = []
    requests = _open_dir(os.path.join(path, "requests"))
    try:
        results = _open_dir(os.path.join(path, "results"))
        try:
            seen: set[str] = set()         # a name that could not be removed comes back
            while len(done) < MAX_REQUESTS:
                names = sorted(set(os.listdir(requests)) - seen)[:MAX_REQUESTS - len(done)]
                if not names:
                    break
                seen.update(names)
                for name in names:
                    done += _apply_one(name, requests, results, quarantine)
        finally:
            os.close(results)
    finally:
        os.close(requests)
    return done


def _apply_one(name: str, requests: int, results: int,
               quarantine: "PostfixQuarantine") -> list[tuple[str, str]]:
    try:
        if not _unlink(name, requests):
            return []                                         # withdrawn meanwhile
    except OSError as exc:                                    # e.g. a directory
        log.warning("quarantine: cannot remove the request %r: %s", name[:80], exc)
        return [(name, str(exc))]
    m = _REQUEST.match(name)
    if m is None:
        log.warning("quarantine: dropped the request %r (not ACTION.QUEUEID)", name[:80])
        return [(name, "not a request")]
    action, qid = m.groups()
    error = ""
    try:
        if action == "release":
            quarantine.release(qid)
        else:
            quarantine.delete(qid)
    except QuarantineError as exc:
        error = str(exc)[:MAX_RESULT]
    log.info("quarantine: %s %s: %s", action, qid, error or "ok")
    answer = name + (".failed" if error else ".ok")
    try:
        _unlink(answer, results)           # never write through a file (or link) put there
        fd = os.open(answer, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o640,
                     dir_fd=results)
        owner = os.fstat(results)
        os.fchown(fd, owner.st_uid, owner.st_gid)           # readable by the asking user
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(error)
    except OSError as exc:
        log.warning("quarantine: cannot answer %s: %s", answer, exc)
    return [(name, error)]


class PostfixQuarantine:
    """The hold queue of one Postfix instance (``config_dir``: its main.cf
    dir).  With ``requests`` (a :class:`RequestQueue`), release and delete
    go through it instead of running ``postsuper`` (which needs root); with
    ``recorder``, released and deleted messages are kept for training."""

    def __init__(self, config_dir: str = "/etc/postfix",
                 recorder: Optional["DecisionSpool"] = None,
                 requests: Optional[RequestQueue] = None) -> None:
        self.config_dir = config_dir
        self.recorder = recorder
        self.requests = requests

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
        if self.requests is not None and queue_id:
            self.requests.ask("release", queue_id)     # the root side keeps the copy
            return (queue_id,)
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
        if self.requests is not None:
            self.requests.ask("delete", queue_id)
            return
        self._record(_check_id(queue_id), True)
        _run(self._cmd("postsuper", "-d", queue_id, "hold"))
