"""Every YAML example of the documentation goes through ``outpost
check-config`` and ``outpost run --dry-run``.

The examples: each ``.. code-block:: yaml`` of README.rst, docs/*.rst and
docs/man/*.rst, and contrib/outpost.yaml.  The rules (docs/testing.rst,
"Documentation examples"):

* an example that is not a whole configuration (it lacks ``users`` /
  ``users_from`` or ``report_abuse_to``) is a fragment: it is merged,
  mapping into mapping, over :data:`BASE` (its own keys win);
* the files an example names under ``/etc/outpost``, ``/var/lib/outpost``,
  ``/var/spool/outpost`` and ``/run/outpost`` are moved into a scratch
  folder and created there (the secret, DKIM keys of the named algorithm,
  password files), so the dry run reads real files;
* an example meant to be wrong is preceded in the source by the comment
  ``.. invalid-example: TEXT``; it must fail both commands with TEXT in the
  error;
* YAML configuration shown in a plain ``::`` literal block is an error (it
  would escape this test): use ``.. code-block:: yaml``.
"""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from typing import Any, Optional

import pytest
import yaml

from outpost.config.parse import TOP_KEYS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SOURCES = (["README.rst"] + sorted(os.path.relpath(p, ROOT) for p in
                                   glob.glob(os.path.join(ROOT, "docs", "*.rst"))
                                   + glob.glob(os.path.join(ROOT, "docs", "man", "*.rst"))))

#: What a fragment is merged over.
BASE: dict[str, Any] = yaml.safe_load(textwrap.dedent("""\
    report_abuse_to: abuse@example.net
    secret_file: /etc/outpost/secret
    store: sqlite:///var/lib/outpost/state.db
    reports: {spool_dir: /var/spool/outpost/reports, listener_auth: none}
    domains: [example.com, example.org, example.net]
    users:
      - {name: web, type: ip, ips: [192.0.2.0/28], domains: [example.com]}
    """))

#: Folders whose files the examples name; moved into the scratch folder.
SYSTEM_DIRS = ("/etc/outpost/", "/var/lib/outpost/", "/var/spool/outpost/", "/run/outpost/")

_BLOCK = re.compile(r"^(?:\.\. invalid-example: (?P<invalid>.+)\n\n)?"
                    r"\.\. code-block:: yaml\n\n(?P<body>(?:   .*\n|[ \t]*\n)+)", re.M)
_LITERAL = re.compile(r"::\n\n(?P<body>(?:   .*\n|[ \t]*\n)+)")


@dataclass(frozen=True)
class Example:
    where: str                      # file:line
    text: str
    invalid: Optional[str] = None   # the expected error, for an example meant to be wrong


def _read(rel: str) -> str:
    with open(os.path.join(ROOT, rel), encoding="utf-8") as fh:
        return fh.read()


def examples() -> list[Example]:
    out = [Example("contrib/outpost.yaml", _read("contrib/outpost.yaml"))]
    for rel in SOURCES:
        text = _read(rel)
        for m in _BLOCK.finditer(text):
            line = text.count("\n", 0, m.start("body")) + 1
            out.append(Example(f"{rel}:{line}", textwrap.dedent(m.group("body")),
                               m.group("invalid")))
    return out


EXAMPLES = examples()


def _merged(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        return {**base, **{k: _merged(base.get(k), v) for k, v in over.items()}}
    return over


def _moved(value: Any, scratch: str) -> Any:
    """Every system path in the configuration, inside ``scratch``."""
    if isinstance(value, dict):
        return {k: _moved(v, scratch) for k, v in value.items()}
    if isinstance(value, list):
        return [_moved(v, scratch) for v in value]
    if isinstance(value, str):
        for prefix in SYSTEM_DIRS:
            if value.startswith(prefix) or value.startswith("sqlite://" + prefix):
                return value.replace(prefix, os.path.join(scratch, prefix.lstrip("/")), 1)
    return value


def _create_files(config: dict[str, Any], scratch: str) -> None:
    """The secret, the DKIM keys and the password files the configuration
    names (inside ``scratch``), as an operator would have made them."""
    from outpost.core.idtoken import new_secret
    from outpost.effects.dkim import keygen

    def write(path: str, data: bytes) -> None:
        if not path.startswith(scratch) or os.path.exists(path):
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(data)
        os.chmod(path, 0o600)

    write(config.get("secret_file", "/etc/outpost/secret"), new_secret())
    for domain in config.get("domains") or []:
        if not isinstance(domain, dict):
            continue
        keys = domain.get("dkim") or []
        for key in keys if isinstance(keys, list) else [keys]:
            path = key["key"]
            if path.startswith(scratch) and not os.path.exists(path):
                os.makedirs(os.path.dirname(path), exist_ok=True)
                made, _ = keygen(domain["name"], key["selector"], key.get("algorithm", "rsa"),
                                 1024, os.path.dirname(path))
                os.replace(made, path)
    smtp = (config.get("reports") or {}).get("smtp") or {}
    if smtp.get("password_file"):
        write(smtp["password_file"], b"example-password\n")


def _outpost(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "outpost", *args], capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.where for e in EXAMPLES])
def test_example_passes_check_config_and_dry_run(example: Example, tmp_path) -> None:
    doc = yaml.safe_load(example.text)
    assert isinstance(doc, dict), f"{example.where}: a YAML example is a mapping"
    complete = "report_abuse_to" in doc and ("users" in doc or "users_from" in doc)
    config = _moved(doc if complete else _merged(BASE, doc), str(tmp_path))
    _create_files(config, str(tmp_path))
    path = tmp_path / "outpost.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    checked = _outpost("check-config", "-c", str(path))
    dry = _outpost("run", "--dry-run", "-c", str(path))
    if example.invalid is not None:
        assert checked.returncode == 2 and example.invalid in checked.stderr, checked.stderr
        assert dry.returncode != 0 and example.invalid in dry.stderr, dry.stderr
        return
    assert checked.returncode == 0, f"{example.where}: check-config\n{checked.stderr}"
    assert dry.returncode == 0, f"{example.where}: run --dry-run\n{dry.stderr}"
    assert "dry run OK" in dry.stdout


def test_there_are_examples_and_one_is_marked_invalid() -> None:
    assert len(EXAMPLES) >= 6
    assert any(e.invalid for e in EXAMPLES)


@pytest.mark.parametrize("rel", SOURCES)
def test_configuration_examples_are_code_blocks(rel: str) -> None:
    """A configuration shown in a ``::`` literal block would not be walked."""
    text = _read(rel)
    for m in _LITERAL.finditer(text):
        try:
            doc = yaml.safe_load(textwrap.dedent(m.group("body")))
        except yaml.YAMLError:
            continue
        if isinstance(doc, dict) and set(doc) & TOP_KEYS:
            line = text.count("\n", 0, m.start("body")) + 1
            pytest.fail(f"{rel}:{line}: a configuration example in a '::' block; "
                        f"use '.. code-block:: yaml'")


def test_a_broken_example_fails(tmp_path) -> None:
    """The walk can fail: a fragment with a bad store URL is refused by both."""
    config = _moved(_merged(BASE, {"store": "unix:///run/redis.sock"}), str(tmp_path))
    _create_files(config, str(tmp_path))
    path = tmp_path / "outpost.yaml"
    path.write_text(yaml.safe_dump(config))
    assert _outpost("check-config", "-c", str(path)).returncode == 2
    assert _outpost("run", "--dry-run", "-c", str(path)).returncode == 2
