"""core/stamps.py: the removals of an accepted message are the ones the
former generator-based code chose (one loop now; compared here)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from outpost.config.model import IdentityHeader, User
from outpost.core import headers as hdr
from outpost.core.stamps import occurrences, removals
from outpost.core.types import Message


def _old_removals(msg: Message, user: User | None):
    drop = {h.header.lower() for h in (user.identity_headers if user else ()) if h.remove}
    out = [(name, n) for (name, _), (low, n) in zip(msg.headers, occurrences(n for n, _ in msg.headers))
           if low in drop or hdr.is_owned(name)]
    out.reverse()
    return tuple(out)


_names = st.sampled_from(["From", "from", "X-Outpost-ID", "x-outpost-user", " X-Outpost-Class",
                          "X-Originating-IP", "X-Report-Abuse-To", "X-Sender", "x-sender", "Subject",
                          "X-Outpost", "Received", "İ", "X-Customer"])


@settings(max_examples=300, deadline=None)
@given(names=st.lists(_names, max_size=12),
       rules=st.lists(st.tuples(st.sampled_from(["X-Sender", "x-customer", "FROM"]), st.booleans()),
                      max_size=3),
       with_user=st.booleans())
def test_removals_unchanged(names, rules, with_user) -> None:
    msg = Message(headers=[(n, " v") for n in names])
    user = (User(name="u", type="ip", identity_headers=tuple(IdentityHeader(h, remove=r) for h, r in rules))
            if with_user else None)
    assert removals(msg, user) == _old_removals(msg, user)


def test_removals_count_occurrences_case_insensitively() -> None:
    msg = Message(headers=[("X-Outpost-ID", "a"), ("Subject", "s"), ("x-outpost-id", "b")])
    assert removals(msg, None) == (("x-outpost-id", 2), ("X-Outpost-ID", 1))
