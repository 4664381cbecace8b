"""Learning from the operator (the Bayes model in the store, the blob
``outpost train`` writes): receivers' complaints (``outpost feedback`` with
``feedback.learn_from_complaints``) and the operator's decisions about
quarantined messages (``outpost train --from-quarantine``: a released
message is ham, a deleted one spam).

``quarantine.training_dir`` holds the decided messages::

    released/<time>-<queue id>.eml          released, not learned yet
    deleted/<time>-<queue id>.eml           deleted (a copy made before), not learned yet
    learned/released/…, learned/deleted/…   learned once, kept until ``keep`` passes

A message is learned at most once: it is moved to ``learned/`` before the
model is written (and moved back when the store fails).  Every folder keeps
at most ``max_kept`` messages of at most ``keep`` seconds; the oldest go."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from .config.model import QuarantineSettings
from .store.base import Store, StoreError
from .store.filelock import held

log = logging.getLogger("outpost.training")

RELEASED, DELETED, LEARNED = "released", "deleted", "learned"
MAX_SWAPS = 50                # tries to write the model over the one it was made from
MAX_READ = 2_000_000          # bytes of a decided message read to learn from (the scan reads less)
_SAFE_ID = re.compile(r"[^0-9A-Za-z]")


class TrainingError(OSError):
    """The training folder cannot be used."""


def learn(store: Store, messages: Iterable[tuple[bytes, bool]]) -> int:
    """Add ``(message, is_spam)`` to the operator's model in the store (a
    fresh one when there is none); the milter uses it after a reload.  How
    many were learned.  Raises ModelError (the stored model is unreadable)
    and StoreError.

    Another learner (``outpost feedback``, ``outpost train`` on this host or
    another of the store) may write the model at the same moment: the new
    model is written only over the one it was made from
    (:meth:`~outpost.store.base.Store.swap_blob`), else made again from the
    newer one, so no learner's messages are lost."""
    from .spam.bayes import Model, outbound_view, tokenize
    from .spam.from_config import MODEL_BLOB
    learned = [(tokenize(outbound_view(raw)), is_spam) for raw, is_spam in messages]
    if not learned:
        return 0
    for _ in range(MAX_SWAPS):
        blob = store.get_blob(MODEL_BLOB)
        model = Model.from_bytes(blob) if blob else Model()
        for tokens, is_spam in learned:
            model.learn(tokens, is_spam)
        if store.swap_blob(MODEL_BLOB, blob, model.pruned(min_count=1, max_tokens=60_000).to_bytes()):
            return len(learned)
    raise StoreError(f"the trained model changed {MAX_SWAPS} times while {len(learned)} "
                     f"message(s) were learned into it; not learned")


@dataclass(frozen=True)
class Learned:
    ham: int
    spam: int


class DecisionSpool:
    """``quarantine.training_dir``: see the module's docstring."""

    def __init__(self, settings: QuarantineSettings) -> None:
        self.root = Path(settings.training_dir)
        self.keep = settings.keep
        self.max_kept = settings.max_kept

    def _dir(self, *parts: str) -> Path:
        path = self.root.joinpath(*parts)
        try:
            path.mkdir(parents=True, exist_ok=True, mode=0o750)
        except OSError as exc:
            raise TrainingError(f"quarantine.training_dir {path}: {exc.strerror}") from None
        return path

    def record(self, queue_id: str, raw: bytes, spam: bool) -> Path:
        """Keep a copy of a message the operator released (ham) or is about
        to delete (spam)."""
        where = self._dir(DELETED if spam else RELEASED)
        path = where / f"{time.time_ns()}-{_SAFE_ID.sub('', queue_id)[:32]}.eml"
        tmp = where / f".{path.name}.{os.getpid()}"
        try:
            with open(tmp, "wb") as fh:
                fh.write(raw)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
            self.prune()
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise TrainingError(f"quarantine.training_dir {where}: {exc.strerror}") from None
        return path

    def _folders(self) -> list[Path]:
        return [self.root / RELEASED, self.root / DELETED,
                self.root / LEARNED / RELEASED, self.root / LEARNED / DELETED]

    @staticmethod
    def _files(where: Path) -> list[Path]:
        if not where.is_dir():
            return []
        return sorted(p for p in where.iterdir() if p.suffix == ".eml" and not p.name.startswith("."))

    def prune(self) -> int:
        """Drop messages older than ``keep`` and the oldest beyond
        ``max_kept`` in each folder; how many went."""
        cutoff = time.time_ns() - int(self.keep * 1e9)
        gone = 0
        for where in self._folders():
            files = self._files(where)          # names start with the time: oldest first
            for i, path in enumerate(files):
                born = int(path.name.split("-", 1)[0]) if path.name.split("-", 1)[0].isdigit() else 0
                if born < cutoff or i < len(files) - self.max_kept:
                    path.unlink(missing_ok=True)
                    gone += 1
        return gone

    def pending(self) -> list[tuple[Path, bool]]:
        """The decided messages not learned yet: (file, is_spam)."""
        return ([(p, False) for p in self._files(self.root / RELEASED)]
                + [(p, True) for p in self._files(self.root / DELETED)])

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        with held(self._dir() / ".train.lock"):
            yield

    def train(self, store: Store) -> Learned:
        """Learn every pending message once into the store's model."""
        with self._exclusive():
            self.prune()
            taken: list[tuple[Path, Path, bool]] = []
            try:
                for path, spam in self.pending():
                    target = self._dir(LEARNED, DELETED if spam else RELEASED) / path.name
                    try:
                        os.rename(path, target)
                    except FileNotFoundError:
                        continue                 # pruned meanwhile
                    taken.append((target, path, spam))
                messages = []
                for target, _, spam in taken:
                    with open(target, "rb") as fh:
                        messages.append((fh.read(MAX_READ), spam))
                learn(store, messages)
            except BaseException:
                for target, path, _ in taken:    # not learned: pending again
                    with contextlib.suppress(OSError):
                        os.rename(target, path)
                raise
        spam_n = sum(1 for _, _, spam in taken if spam)
        return Learned(ham=len(taken) - spam_n, spam=spam_n)
