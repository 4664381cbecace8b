"""A do-nothing pymilter: the baseline cost of any Python milter.

It asks for every event Outpost handles (connect, HELO, MAIL, RCPT, headers,
body, end of message) and answers CONTINUE to each, without touching the
message.  ``--minimal`` overrides no callback at all (libmilter then skips
every stage it can).

    python -m bench.noop_milter unix:/tmp/noop.sock
"""

from __future__ import annotations

import argparse

import Milter


class NoopMilter(Milter.Base):
    """Receives every stage, changes nothing."""

    def connect(self, hostname, family, hostaddr):
        return Milter.CONTINUE

    def hello(self, heloname):
        return Milter.CONTINUE

    def envfrom(self, mailfrom, *params):
        return Milter.CONTINUE

    def envrcpt(self, to, *params):
        return Milter.CONTINUE

    def header(self, name, value):
        return Milter.CONTINUE

    def eoh(self):
        return Milter.CONTINUE

    def body(self, chunk):
        return Milter.CONTINUE

    def eom(self):
        return Milter.CONTINUE


class MinimalMilter(Milter.Base):
    """Overrides nothing: the negotiated protocol skips all it can."""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("socket", help="milter socket spec, e.g. unix:/run/noop.sock")
    parser.add_argument("--minimal", action="store_true", help="override no callback")
    parser.add_argument("--timeout", type=int, default=60, help="MTA I/O timeout (s)")
    args = parser.parse_args(argv)
    Milter.factory = MinimalMilter if args.minimal else NoopMilter
    Milter.set_flags(0)
    Milter.runmilter("noop", args.socket, args.timeout)


if __name__ == "__main__":
    main()
