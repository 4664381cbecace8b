"""bench/worst_case.py runs its shapes through the real engine (two cheap ones here)."""

from __future__ import annotations

from bench import worst_case


def test_shapes_are_what_they_say():
    head, body = worst_case.tiny_parts(100)
    assert body.count(b"--tiny\r\n") == 100 and b'boundary="tiny"' in head
    head, body = worst_case.nested_mime(50)
    assert body.count(b"multipart/mixed") == 50


def test_prints_each_shape_and_the_worst(capsys):
    assert worst_case.main(["--only", "tiny parts", "--only", "one word", "--repeat", "1",
                            "--budget", "10000"]) == 0
    out = capsys.readouterr().out
    assert "10 000 tiny parts" in out and "1 MB line of one word" in out
    assert "worst: " in out and "within the 10000 ms budget" in out
