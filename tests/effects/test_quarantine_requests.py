"""Quarantine release and delete through the request directory (the
panel's way, as a user that is not root): the asking side, and the root
side applying requests with the real ``postsuper``."""

from __future__ import annotations

import threading

import pytest

from outpost.effects.quarantine import PostfixQuarantine, QuarantineError, RequestQueue, apply_requests


def test_a_failed_request_is_answered_with_postsuper_s_error(tmp_path) -> None:
    # postsuper refuses a Postfix configuration directory that does not exist
    root_side = PostfixQuarantine(str(tmp_path / "no-postfix"))
    asking = PostfixQuarantine("/nonexistent", requests=RequestQueue(str(tmp_path / "q"), timeout=30))
    errors: list[str] = []

    def ask() -> None:
        try:
            asking.delete("ABCDEF123")
        except QuarantineError as exc:
            errors.append(str(exc))
    t = threading.Thread(target=ask)
    t.start()
    done: list = []
    while t.is_alive() and not done:                      # the path unit's part
        try:
            done = apply_requests(str(tmp_path / "q"), root_side)
        except FileNotFoundError:                         # not created yet
            pass
    t.join(30)
    assert [name for name, _ in done] == ["delete.ABCDEF123"] and done[0][1]
    assert errors and "postsuper" in errors[0] and "no-postfix" in errors[0]
    assert not list((tmp_path / "q" / "results").iterdir())


def test_an_unanswered_request_is_withdrawn(tmp_path) -> None:
    clock = iter([0.0, 0.0, 99.0]).__next__
    asking = PostfixQuarantine("/nonexistent", requests=RequestQueue(str(tmp_path), timeout=5, clock=clock))
    with pytest.raises(QuarantineError, match="not applied within 5s.*withdrawn"):
        asking.release("ABCDEF123")
    assert not list((tmp_path / "requests").iterdir())


def test_apply_takes_only_request_names_and_follows_no_symbolic_link(tmp_path) -> None:
    q = tmp_path / "q"
    (q / "requests").mkdir(parents=True)
    (q / "results").mkdir()
    for name in ("release.x;rm -rf", "stray", "delete.AB"):
        (q / "requests" / name).write_text("")
    done = apply_requests(str(q), PostfixQuarantine(str(tmp_path / "no-postfix")))
    assert sorted(done) == [("delete.AB", "not a request"), ("release.x;rm -rf", "not a request"),
                            ("stray", "not a request")]
    assert not list((q / "requests").iterdir()) and not list((q / "results").iterdir())
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "release.ABCDEF1").write_text("")
    (q / "requests").rmdir()
    (q / "requests").symlink_to(victim)
    with pytest.raises(OSError):
        apply_requests(str(q), PostfixQuarantine(str(tmp_path / "no-postfix")))
    assert (victim / "release.ABCDEF1").exists()
    with pytest.raises(ValueError):
        apply_requests(str(q), PostfixQuarantine("/x", requests=RequestQueue(str(q))))


def test_a_request_that_cannot_be_removed_is_reported_once(tmp_path) -> None:
    q = tmp_path / "q"
    (q / "requests" / "release.ABCDEF1").mkdir(parents=True)    # a directory, not a file
    (q / "results").mkdir()
    done = apply_requests(str(q), PostfixQuarantine(str(tmp_path / "no-postfix")))
    assert [name for name, _ in done] == ["release.ABCDEF1"] and done[0][1]
