"""The pymilter class: a thin translation between libmilter and the core.

Each callback turns pymilter's arguments into core calls and the core's
:class:`~outpost.core.types.Decision` into milter replies and message edits.
Any exception answers ``451 4.3.0`` and is logged with the queue id and the
traceback; the process keeps serving.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import TYPE_CHECKING, Callable, Optional, Union

import Milter

from ..core.types import INTERNAL_ERROR, Action, Decision, Session
from ..logs import QUEUE_ID

if TYPE_CHECKING:
    from ..effects.metrics import WorkerMetrics
    from ..runtime import Runtime

log = logging.getLogger("outpost.milter")

_CODES = {
    Action.CONTINUE: Milter.CONTINUE,
    Action.ACCEPT: Milter.CONTINUE,     # at end of message CONTINUE = deliver with our edits
    Action.REJECT: Milter.REJECT,
    Action.TEMPFAIL: Milter.TEMPFAIL,
    Action.DISCARD: Milter.DISCARD,
}

#: How a message that got no final decision ends (built once: every
#: connection closes).
_RESET = Decision(Action.CONTINUE, reason="reset")          # RSET, or a new MAIL FROM
_ABORTED = Decision(Action.CONTINUE, reason="aborted")
_CLOSED = Decision(Action.CONTINUE, reason="closed")

#: The modifications Outpost may make (negotiated with the MTA).
FLAGS = Milter.ADDHDRS | Milter.CHGHDRS | Milter.QUARANTINE


class Live:
    """Number of open milter connections in this process (for a graceful stop)."""

    def __init__(self) -> None:
        self._n = 0
        self._lock = threading.Lock()

    def up(self) -> None:
        with self._lock:
            self._n += 1

    def down(self) -> None:
        with self._lock:
            self._n -= 1

    @property
    def count(self) -> int:
        return self._n


@Milter.header_leading_space
class OutpostMilter(Milter.Base):
    """One instance per MTA connection (``Milter.factory``)."""

    def __init__(self, runtime: Runtime, live: Optional[Live] = None,
                 metrics: Optional[WorkerMetrics] = None) -> None:
        super().__init__()
        self.runtime = runtime
        self.policy = runtime.policy
        self.session = Session()
        self.queue_id = ""
        self._stage_started = time.monotonic()
        self._unlogged: Optional[tuple] = None    # (message, decision, queue id) to log
        self._failed_at: Optional[str] = None     # stage of an internal error in this transaction
        self._live = live
        self._metrics = metrics                   # effects.metrics.WorkerMetrics, or None
        if live is not None:
            live.up()

    # -- plumbing ----------------------------------------------------------------
    @property
    def queue_id(self) -> str:
        return self._queue_id

    @queue_id.setter
    def queue_id(self, value: str) -> None:
        # Every log line written while serving this message carries it
        # (outpost.logs): the callback's thread knows it from now on.
        self._queue_id = value
        QUEUE_ID.set(value)

    def _answer(self, code: int, nr_mask: int) -> int:
        """The answer of a ``@Milter.noreply`` stage: CONTINUE (which the
        decorator turns into NOREPLY) when the MTA agreed not to wait for it
        (``nr_mask`` negotiated; pymilter documents ``_protocol`` for this),
        whatever happened — any other answer breaks the protocol (Postfix then
        hangs until its timeout), and a failure is answered at end of
        message; else ``code``."""
        return Milter.CONTINUE if self._protocol & nr_mask else code

    def _macro(self, name: str) -> Optional[str]:
        try:
            value = self.getsymval(name)
        except (TypeError, AttributeError):      # no context (tests) or stage without macros
            return None
        return value or None

    def _reply(self, decision: Decision) -> int:
        if decision.reply is not None and decision.action in (Action.REJECT, Action.TEMPFAIL):
            r = decision.reply
            self.setreply(r.code, r.xcode, r.text.replace("%", "%%"))
        return _CODES[decision.action]

    def _guarded(self, stage: str, fn: Callable[[], int]) -> int:
        started = self._stage_started = time.monotonic()
        QUEUE_ID.set(self._queue_id)        # the thread may have served another connection
        try:
            return fn()
        except Exception:  # noqa: BLE001 - any failure must tempfail, never accept
            return self._internal_error(stage)
        finally:
            spent = time.monotonic() - started
            msg = self.session.message
            if msg is not None:
                msg.spent += spent
            if self._metrics is not None:
                self._record(self._metrics.stage, stage, spent)

    def _internal_error(self, stage: str) -> int:
        """Log the exception being handled and answer 451 4.3.0.  The
        transaction is failed for good: an MTA that did not wait for this
        stage's answer (a no-reply header or body), or that goes on after a
        refused recipient, gets the 451 at end of message.  The queue id
        is the line's ``QID:`` prefix (logs.py), as on every line."""
        log.exception("internal error at %s (client=%s); answering 451 4.3.0",
                      stage, self.session.client_ip or "-")
        self._failed_at = stage
        self._finish(Decision(Action.TEMPFAIL, INTERNAL_ERROR, "internal_error"))
        return self._tempfail()

    def _tempfail(self) -> int:
        try:
            self.setreply(INTERNAL_ERROR.code, INTERNAL_ERROR.xcode, INTERNAL_ERROR.text)
        except Exception:  # the reply is best effort, the code is what counts
            log.debug("setreply failed after an internal error", exc_info=True)
        return Milter.TEMPFAIL

    def _finish(self, decision: Decision) -> None:
        """Close the message's account (after a final decision) and forget
        it.  Its log line is written by the next callback (MAIL FROM, abort
        or close): after the reply has gone to the MTA, not while it waits."""
        msg = self.session.message
        if msg is not None:
            now = time.monotonic()
            msg.spent += now - self._stage_started
            self._stage_started = now
            self._flush_log()
            self._unlogged = (msg, decision, self.queue_id)
            self.session.message = None

    def _flush_log(self) -> None:
        if self._unlogged is not None:
            msg, decision, queue_id = self._unlogged
            self._unlogged = None
            self.policy.log_message(self.session, decision, queue_id, msg)
            if self.runtime.stats is not None:
                try:
                    self.runtime.stats.record(msg, decision, queue_id)
                except Exception:  # statistics never decide a message's fate
                    log.warning("message statistics not counted", exc_info=True)
            if self._metrics is not None:
                self._record(self._metrics.message, decision, msg)
                self._record(self._metrics.sync_store, self.runtime.store)

    @staticmethod
    def _record(fn: Callable[..., object], *args: object) -> None:
        """A metrics update; its failure (disk full under the metrics
        directory...) is logged and never changes an answer."""
        try:
            fn(*args)
        except Exception:  # metrics are best effort
            log.warning("metrics update failed", exc_info=True)

    def _stage_result(self, decision: Decision) -> int:
        if decision.blocks:
            self._finish(decision)
        return self._reply(decision)

    # -- callbacks -------------------------------------------------------------------
    @Milter.noreply
    def connect(self, hostname: str, family: int, hostaddr: Union[tuple, str, None]) -> int:
        # No reply: the MTA greets the client without waiting for us (more
        # messages per second even for a do-nothing milter; docs/benchmarks.rst).
        # The core never refuses here; a refusal, or an internal error, is
        # answered at the first MAIL FROM (MTAs replace a milter's text at
        # connect by their own anyway).
        try:
            addr = self._macro("{client_addr}")
            if addr is None and family in (socket.AF_INET, socket.AF_INET6) and hostaddr:
                addr = hostaddr[0] if isinstance(hostaddr, tuple) else str(hostaddr)
            # The port comes with the connect command itself (Postfix says 0
            # for mail without an SMTP client, see Policy.connect).
            port = (hostaddr[1] if isinstance(hostaddr, tuple) and len(hostaddr) > 1
                    and family in (socket.AF_INET, socket.AF_INET6) else self._macro("{client_port}"))
            d = self.policy.connect(self.session, addr, hostname or "", port)
        except Exception:  # refuse the session's mail, never accept it unfiltered
            log.exception("internal error at connect (client=%s); MAIL FROM will get 451 4.3.0",
                          self.session.client_ip or "-")
            d = Decision(Action.TEMPFAIL, INTERNAL_ERROR, "internal_error")
        if d.blocks:
            self.session.refusal = d
        return Milter.CONTINUE

    # Milter.Base's entry points (envfrom_bytes...) decode the envelope and
    # header values as UTF-8, the original bytes kept as surrogates.
    def envfrom(self, mailfrom: str, *params: str) -> int:
        def run() -> int:
            self._failed_at = None                         # a new transaction
            if self.session.message is not None:           # RSET without abort callback
                self._finish(_RESET)
            self._flush_log()
            self.queue_id = self._macro("i") or ""
            d = self.policy.mail_from(self.session, mailfrom, self._macro("{auth_authen}"),
                                      self._macro("{client_addr}"))
            return self._stage_result(d)
        return self._guarded("envfrom", run)

    def envrcpt(self, to: str, *params: str) -> int:
        def run() -> int:
            self.queue_id = self._macro("i") or self.queue_id
            d = self.policy.rcpt(self.session, to)
            if d.blocks:                                    # one recipient refused, not the message
                if self._metrics is not None:
                    self._record(self._metrics.recipient_refused, d)
                return self._reply(d)
            return Milter.CONTINUE
        return self._guarded("envrcpt", run)

    @Milter.noreply
    def header(self, name: str, value: str) -> int:
        # Not timed (it only records the header): the clock would cost more.
        try:
            self.policy.header(self.session, name, value)
        except Exception:  # noqa: BLE001 - as in _guarded
            return self._answer(self._internal_error("header"), Milter.P_NR_HDR)
        return Milter.CONTINUE

    @Milter.noreply
    def eoh(self) -> int:
        # End of headers: the core refuses a header block over its limits
        # (answered here when the MTA waits for this stage, else at end of
        # message) and decides the DKIM signing domain before the body.
        def run() -> int:
            d = self.policy.end_of_headers(self.session)
            if d.blocks and not self._protocol & Milter.P_NR_EOH:
                return self._stage_result(d)
            return Milter.CONTINUE
        return self._answer(self._guarded("eoh", run), Milter.P_NR_EOH)

    @Milter.noreply
    def body(self, chunk: bytes) -> int:
        def run() -> int:
            self.policy.body(self.session, chunk)
            return Milter.CONTINUE
        return self._answer(self._guarded("body", run), Milter.P_NR_BODY)

    def eom(self) -> int:
        def run() -> int:
            if self._failed_at is not None:     # logged and finished where it happened
                return self._tempfail()
            self.queue_id = self._macro("i") or self.queue_id
            d = self.policy.end_of_message(self.session, self.queue_id)
            if not d.blocks:
                for name, idx in d.remove_headers:
                    self.chgheader(name, idx, "")
                # header_leading_space is negotiated: the MTA adds no blank
                # after the colon, so we supply it.
                for name, value in d.add_headers:
                    self.addheader(name, " " + value)
                for name, value in reversed(d.prepend_headers):
                    self.addheader(name, " " + value, 0)
                if d.quarantine:
                    self.quarantine(d.quarantine)
            self._finish(d)
            return self._reply(d)
        return self._guarded("eom", run)

    def abort(self) -> int:
        def run() -> int:
            self._failed_at = None
            self._finish(_ABORTED)
            self._flush_log()
            return Milter.CONTINUE
        return self._guarded("abort", run)

    def close(self) -> int:
        try:
            self._finish(_CLOSED)
            self._flush_log()
            self.policy.close(self.session)
        except Exception:  # close must never raise into libmilter
            log.exception("error while closing a connection")
        finally:
            QUEUE_ID.set("")
            if self._live is not None:
                self._live.down()
                self._live = None
        return Milter.CONTINUE
