"""``python -m tests.e2e.faulty_outpost ARGS``: ``outpost ARGS`` whose
policy fails on purpose, for the end-to-end tests of the error path.

Test-only: the production code knows nothing of it.  This entry module wraps
the runtime factory (:meth:`outpost.runtime.Runtime.build`, which every
worker calls) so that each runtime's policy is a :class:`FaultyPolicy`, then
runs Outpost's own command line.  A message that carries the header
:data:`FAULT_HEADER` raises inside the milter: at end of message, or, when
the header's value is ``header``, in the (no-reply) header callback.
"""

from __future__ import annotations

import sys
from typing import Any, Optional

from outpost.cli import main
from outpost.config import Config
from outpost.runtime import Runtime, Secrets

FAULT_HEADER = "X-Test-Fault"


class FaultyPolicy:
    """The real policy, failing at the header or end-of-message stage of a
    message that carries :data:`FAULT_HEADER`; everything else delegated."""

    def __init__(self, policy: Any, header: str = FAULT_HEADER) -> None:
        self._policy = policy
        self._header = header.lower()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._policy, name)

    def header(self, session, name: str, value: str):
        if name.lower() == self._header and value.strip().lower() == "header":
            raise RuntimeError(f"fault injected by {self._header} at the header stage")
        return self._policy.header(session, name, value)

    def end_of_message(self, session, *args, **kwargs):
        msg = session.message
        if msg is not None and any(n.lower() == self._header for n, _ in msg.headers):
            raise RuntimeError(f"fault injected by {self._header}")
        return self._policy.end_of_message(session, *args, **kwargs)


def faulty_build(build):
    """``Runtime.build`` with the policy wrapped in a :class:`FaultyPolicy`."""
    def build_faulty(cls, config: Config, secrets: Optional[Secrets] = None) -> Runtime:
        runtime = build(config, secrets)
        runtime.policy = FaultyPolicy(runtime.policy)      # type: ignore[assignment]
        return runtime
    return classmethod(build_faulty)


if __name__ == "__main__":
    Runtime.build = faulty_build(Runtime.build)            # type: ignore[method-assign]
    sys.exit(main())
