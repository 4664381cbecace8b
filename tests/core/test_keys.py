"""The store key scheme as typed values: the keys spelled exactly as the
stores already hold them, and the windows of a message."""

from outpost.core.keys import Target, WindowKey
from outpost.core.limits import buckets, message_windows, windows
from outpost.core.stamps import kept, occurrences


def test_identity_and_user_keys():
    ident, whole = Target("webfarm", "1042"), Target("webfarm")
    assert (ident.lock_key, whole.lock_key) == ("webfarm/1042", "user:webfarm")
    assert ident.event_keys == ("hits:webfarm/1042", "spam:webfarm/1042", "complaints:webfarm/1042")
    assert whole.event_keys == ("uhits:webfarm/", "uspam:webfarm/", "ucomplaints:webfarm/")
    assert (ident.window_prefix, whole.window_prefix) == ("rl:id:webfarm/1042:", "rl:user:webfarm:")
    assert (str(ident), str(whole)) == ("webfarm/1042", "webfarm")
    assert str(WindowKey(ident, "rcpt", 3600)) == "rl:id:webfarm/1042:rcpt:3600"
    assert Target.of_lock_key("user:webfarm") == whole
    assert Target.of_lock_key("webfarm/a/b@example.com") == Target("webfarm", "a/b@example.com")


def test_message_windows_identity_first_then_user(config):
    alice = next(u for u in config.users if u.name == "alice")
    ws = message_windows(alice, "alice@example.com")
    assert [str(w.key) for w in ws] == ["rl:id:alice/alice@example.com:msg:60"]
    assert windows(alice, Target("alice")) == []
    [b] = buckets(alice, "alice@example.com", 7)
    assert (b.key, b.limit, b.window, b.cost, b.label) == ("rl:id:alice/alice@example.com:msg:60", 5, 60, 1, "5/1m")


def test_header_occurrences_count_per_name_any_case():
    names = ["From", "X-A", "x-a", "To", "X-A"]
    assert list(occurrences(names)) == [("from", 1), ("x-a", 1), ("x-a", 2), ("to", 1), ("x-a", 3)]
    assert list(occurrences([b"DKIM", b"dkim"])) == [(b"dkim", 1), (b"dkim", 2)]
    headers = [(n, " v") for n in names]
    assert kept(headers, (("X-A", 3), ("x-a", 1))) == [("From", " v"), ("x-a", " v"), ("To", " v")]
