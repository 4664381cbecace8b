#!/usr/bin/env python3
"""CPU cost of the worst From headers known, through Outpost's From parser
(``outpost.core.addresses``), next to the parsers it replaced or guards:
the email package's header parser (``email.headerregistry``, quadratic on
runs of backslashes, quotes, dots and words), the old ``_SIMPLE_FROM``
regex (quadratic on a name of blanks before ``<``), and the spam engine's
message parser on a whole message carrying that From.

A benchmark, not a test: it prints CPU seconds per call (uncached) and
asserts nothing.  The figures for the old parsers are taken on smaller
inputs (``--old-size``) so the run stays short; they grow with the square
of the size.

    python -m bench.parsers_worst [--size 65536] [--old-size 8192]
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from email.headerregistry import HeaderRegistry

from outpost.core import addresses
from outpost.spam.message import parse_message

# The regex the policy used before core/addresses.py (kept here to measure it).
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_ADDR_SPEC = rf"{_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
OLD_SIMPLE_FROM = re.compile(rf"^\s*(?:[^\"<>@,;:\\()\[\]]*?\s*<({_ADDR_SPEC})>|({_ADDR_SPEC}))\s*$")
REGISTRY = HeaderRegistry()

# The spam engine's regexes over message text before they were bounded
# (spam/bayes.py, rules.py, bulk.py), with the current ones, on long runs.
_OLD_ADDR = re.compile(r"[\w.+-]+@([\w-]+(?:\.[\w-]+)+)")
_OLD_QUOTE = re.compile(r"^\s*>.*$", re.MULTILINE)
_OLD_YAHOO = re.compile(rb"-{3,} Yahoo! Groups Sponsor -{3,}.{0,3000}?-{20,}~->", re.DOTALL)


def spam_regexes():
    from outpost.spam import bayes, bulk, rules
    return [
        ("bayes/bulk/rules address", _OLD_ADDR, bayes._ADDR_RE, "a", "findall"),
        ("bulk address", _OLD_ADDR, bulk._EMAIL_RE, "a", "findall"),
        ("rules address in name", _OLD_ADDR, rules._EMAIL_IN_NAME_RE, "-", "findall"),
        ("bulk quoted lines", _OLD_QUOTE, bulk._QUOTE_RE, "\n", "findall"),
        ("bayes list footer", _OLD_YAHOO, bayes._LIST_FOOTER_RES[2], "-", "sub"),
    ]


def hostile(n: int) -> dict[str, str]:
    """From values of about ``n`` characters."""
    return {
        "backslashes": "\\" * n,
        "blanks before <": "Bob" + " " * n + "<",
        "blanks then address": "Bob" + " " * n + "<bob@example.com>",
        "quotes": '"' * n,
        "nested comments": "(" * (n // 2) + ")" * (n // 2) + "a@example.com",
        "open parens": "(" * n,
        "dots": "a" + "." * n,
        "words before <": "a " * (n // 2) + "<a@example.com>",
        "@ signs": "@" * n,
        "quoted backslashes": '"' + "\\" * n,
        "encoded words": "=?utf-8?q?a?= " * (n // 14) + "<a@example.com>",
    }


def near_limit() -> dict[str, str]:
    """The costliest shapes that reach the email parsers: just under and
    just over ``MAX_FROM``, and 998-octet lines (the RFC 5322 line limit)."""
    m = addresses.MAX_FROM
    k = addresses.MAX_PIECES - 8        # pieces left beside the address's own
    addr = " <alice@example.com>"
    w = (m - 60) // k                   # characters per piece to fill MAX_FROM
    w2 = (m - 60) // (k // 2)           # the same for shapes of two pieces each
    return {
        "quoted name of escapes": '"' + ("\\a" + "x" * (w - 2)) * k + '"' + addr,
        "comment of escapes": "(" + ("\\a" + "x" * (w - 2)) * k + ")" + addr,
        "words with dots": " ".join(["a." + "a" * (w2 - 3)] * (k // 2)) + addr,
        "encoded words": " ".join(["=?utf-8?q?" + "=C3=A9" * ((w - 13) // 6) + "?="] * k) + addr,
        "words in a comment": "(" + " ".join(["a" * (w - 1)] * k) + ")" + addr,
        "@ in a comment": "(" + ("@ " + "x" * (w2 - 2)) * (k // 2) + ")" + addr,
        "inner comments": "(" + ("(" + "x" * (w2 - 2) + ")") * (k // 2) + ")" + addr,
        "nested comments depth 4": ("((((" + "x" * ((m - 40) // 8) + "))))") * 2 + addr,
        "comments nested 1000 deep": "(" * 1000 + ")" * 1000 + addr,
        "dots, MAX_PIECES + 1": "a" + "." * addresses.MAX_PIECES + addr,
        "998-octet quoted name": '"' + "a" * 976 + '"' + addr,
        "998-octet line x2 folded": '"' + "a" * 976 + '"\r\n ' + '(' + "b" * 996 + ')' + addr,
        "quotes, MAX_FROM": '"' * m,
        "quotes, MAX_FROM + 1": '"' * (m + 1),
        "backslashes, MAX_FROM + 1": "\\" * (m + 1),
    }


def cpu(fn, *args) -> float:
    t0 = time.process_time()
    fn(*args)
    return time.process_time() - t0


def new_parser(value: str) -> None:
    addresses._parse_from.cache_clear()
    addresses.header_from_address([value])


def old_registry(value: str) -> None:
    try:
        _ = REGISTRY("From", value).addresses          # parsing happens on access
    except (ValueError, TypeError, IndexError, RecursionError):
        pass


def old_regex(value: str) -> None:
    OLD_SIMPLE_FROM.match(value)


def spam_parser(value: str) -> None:
    raw = ("From: " + value + "\r\nTo: x@dest.example\r\nSubject: hi\r\n\r\nHello.\r\n").encode(
        "utf-8", "surrogateescape")
    parse_message(raw, max_scan=262144)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=65536, help="size of hostile From values for the new parser")
    ap.add_argument("--old-size", type=int, default=8192, help="size for the old (quadratic) parsers")
    args = ap.parse_args()
    sys.setrecursionlimit(10_000)          # the old parser at depth; Outpost's default is lower

    print(f"MAX_FROM={addresses.MAX_FROM} MAX_COMMENT_DEPTH={addresses.MAX_COMMENT_DEPTH} "
          f"MAX_PIECES={addresses.MAX_PIECES}")
    print(f"\nHostile From values: new parser at {args.size} chars; old parsers and the spam "
          f"engine's message parser at {args.old_size} chars (CPU seconds per call)")
    print(f"{'input':28s} {'new':>9s} {'registry':>9s} {'old regex':>9s} {'spam msg':>9s}  verdict")
    small = hostile(args.old_size)
    for name, value in hostile(args.size).items():
        new = cpu(new_parser, value)
        reg = cpu(old_registry, small[name])
        rx = cpu(old_regex, small[name])
        sp = cpu(spam_parser, small[name])
        _, reply = addresses.header_from_address([value])
        print(f"{name:28s} {new:9.5f} {reg:9.4f} {rx:9.4f} {sp:9.4f}  {reply or 'accepted'}")

    print(f"\nSpam engine regexes on a run of {args.old_size} characters (old pattern; current "
          f"pattern on {args.size})")
    for name, old, new, unit, how in spam_regexes():
        def run(rx, n, unit=unit, how=how):
            text = unit * n
            if isinstance(rx.pattern, bytes):
                text = text.encode()
            return cpu(rx.findall if how == "findall" else (lambda t: rx.sub(b"", t)), text)
        print(f"{name:28s} old {run(old, args.old_size):8.4f} s   now {run(new, args.size):8.4f} s")

    print("\nCostliest shapes the email parsers still see (just under MAX_FROM and "
          "MAX_PIECES), 998-octet lines and just over the limits, through the new parser (uncached)")
    worst = 0.0
    for name, value in near_limit().items():
        spent = min(cpu(new_parser, value) for _ in range(3))
        worst = max(worst, spent)
        addr, reply = addresses.header_from_address([value])
        print(f"{name:28s} len={len(value):5d} {spent * 1000:7.2f} ms  {reply or addr}")
    print(f"\nworst near the limit: {worst * 1000:.2f} ms CPU")
    value = "Alice Example <alice@example.com>"
    n = 2000
    t0 = time.process_time()
    for _ in range(n):
        addresses._parse_from.cache_clear()
        addresses.header_from_address([value])
    plain = (time.process_time() - t0) / n
    value = '"Example, Alice" (work) <alice@example.com>'
    t0 = time.process_time()
    for _ in range(n):
        addresses._parse_from.cache_clear()
        addresses.header_from_address([value])
    full = (time.process_time() - t0) / n
    print(f"everyday From, uncached: plain form {plain * 1e6:.0f} us, quoted name and comment "
          f"(email parsers cross-check) {full * 1e6:.0f} us")


if __name__ == "__main__":
    main()
