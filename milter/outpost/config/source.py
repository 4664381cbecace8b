"""YAML read safely, with the key path and line of every value.

The file is parsed once with PyYAML's *safe* loader (``yaml.compose`` with
``SafeLoader`` — the node tree behind ``yaml.safe_load``), so every value keeps
the line it came from.  :class:`Node` wraps one value and knows its key path
(``users[1].ips[0]``); its accessors validate types and raise
:class:`ConfigError` naming the path and the line.
"""

from __future__ import annotations

import builtins
import re
from typing import AbstractSet, Any, Callable, Iterator, Optional, TypeVar

import yaml

T = TypeVar("T")

#: Seconds per unit: the one table of time units (durations, rate windows).
DURATION_UNITS: dict[str, float] = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400,
                                    "w": 604800}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")


def parse_duration(value: Any) -> float:
    """Seconds from ``90``, ``30s``, ``10m``, ``1h``, ``1d``, ``1w``, ``250ms``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * DURATION_UNITS[m.group(2) or "s"]
    else:
        raise ValueError(f"{value!r} is not a duration (e.g. 30s, 10m, 1h, 1d)")
    if seconds <= 0:
        raise ValueError("duration must be positive")
    return seconds


class ConfigError(ValueError):
    """An invalid configuration; the message names file, line and key path.

    ``errors`` lists every error found (the loader goes on past a bad
    top-level key or list entry); the message is the first of them."""

    def __init__(self, message: str, errors: Optional[list[str]] = None) -> None:
        super().__init__(message)
        self.errors: list[str] = list(errors) if errors else [message]


class Node:
    """One value of the YAML document with its path and line."""

    __slots__ = ("value", "path", "line", "file", "_node")

    def __init__(self, node: Optional[yaml.Node], path: str, file: str, line: Optional[int] = None):
        self._node = node
        self.path = path
        self.file = file
        self.line = line if line is not None else (node.start_mark.line + 1 if node is not None else 0)
        self.value = _plain(node) if node is not None else None

    # -- errors ---------------------------------------------------------------
    def error(self, message: str) -> ConfigError:
        where = f"{self.file}:{self.line}" if self.line else self.file
        path = self.path or "(top level)"
        return ConfigError(f"{where}: {path}: {message}")

    @property
    def missing(self) -> bool:
        return self._node is None

    # -- structure -----------------------------------------------------------
    def mapping(self, allowed: Optional[AbstractSet[str]] = None, required: tuple[str, ...] = (),
                errors: Optional[list[str]] = None) -> dict[str, "Node"]:
        """The mapping's entries as Nodes; unknown keys and duplicates are
        errors (with ``errors``: each is added to it and the entry skipped)."""
        out: dict[str, Node] = {}
        if self._node is None:
            pass
        elif isinstance(self._node, yaml.MappingNode):
            for knode, vnode in self._node.value:
                key = _plain(knode)
                try:
                    if not isinstance(key, str):
                        raise Node(knode, self.path, self.file).error(f"key {key!r} is not a string")
                    kpath = f"{self.path}.{key}" if self.path else key
                    if key in out:
                        raise Node(knode, kpath, self.file).error("duplicate key")
                    if allowed is not None and key not in allowed:
                        hint = _closest(key, allowed)
                        raise Node(knode, kpath, self.file).error(
                            "unknown key" + (f" (did you mean '{hint}'?)" if hint else ""))
                except ConfigError as exc:
                    if errors is None:
                        raise
                    errors.extend(exc.errors)
                    continue
                out[key] = Node(vnode, kpath, self.file)
        else:
            raise self.error(f"expected a mapping, got {_kind(self._node)}")
        for key in required:
            if key not in out:
                raise self.error(f"required key '{key}' is missing")
        return out

    def items(self) -> list["Node"]:
        """The sequence's items as Nodes (a missing value is an empty list)."""
        if self._node is None:
            return []
        if isinstance(self._node, yaml.SequenceNode):
            return [Node(n, f"{self.path}[{i}]", self.file) for i, n in enumerate(self._node.value)]
        raise self.error(f"expected a list, got {_kind(self._node)}")

    def is_mapping(self) -> bool:
        return isinstance(self._node, yaml.MappingNode)

    # -- scalars ---------------------------------------------------------------
    def str(self, choices: Optional[tuple[str, ...]] = None, nonempty: bool = True,
            booleans: Optional[dict[bool, str]] = None) -> str:
        """A string; with ``choices`` one of them.

        YAML 1.1 reads an unquoted ``off``, ``on``, ``yes``, ``no``,
        ``true``, ``false`` as a boolean; where a string is expected the word
        as written is taken (``header_from: off`` is ``"off"``).  ``booleans``
        maps a boolean to the choice it means (``{False: "off"}``), so that
        ``false`` / ``no`` are accepted where the choice means on/off."""
        v = self.value
        if isinstance(v, bool) and isinstance(self._node, yaml.ScalarNode):
            s = str(self._node.value)
            if choices is not None and s not in choices and booleans is not None and v in booleans:
                s = booleans[v]
        elif isinstance(v, bool) or not isinstance(v, (str, int, float)):
            raise self.error(f"expected a string, got {_kind(self._node)}")
        else:
            s = str(v)
        if nonempty and not s.strip():
            raise self.error("must not be empty")
        if choices is not None and s not in choices:
            raise self.error(f"'{s}' is not one of: {', '.join(choices)}")
        return s

    def int(self, minimum: Optional[int] = None, maximum: Optional[int] = None) -> int:
        v = self.value
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.error(f"expected an integer, got {v!r}")
        if minimum is not None and v < minimum:
            raise self.error(f"{v} is below the minimum {minimum}")
        if maximum is not None and v > maximum:
            raise self.error(f"{v} is above the maximum {maximum}")
        return v

    def float(self, minimum: Optional[float] = None) -> float:
        v = self.value
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise self.error(f"expected a number, got {v!r}")
        if minimum is not None and v < minimum:
            raise self.error(f"{v} is below the minimum {minimum}")
        return float(v)

    def bool(self) -> bool:
        if not isinstance(self.value, bool):
            raise self.error(f"expected true or false, got {self.value!r}")
        return self.value

    def duration(self) -> builtins.float:
        """Seconds from ``90``, ``30s``, ``10m``, ``1h``, ``1d``, ``1w``."""
        try:
            return parse_duration(self.value)
        except ValueError as exc:
            raise self.error(str(exc)) from None

    def parsed(self, fn: Callable[[Any], T], what: builtins.str) -> T:
        """Apply a parser; its ValueError becomes a located ConfigError."""
        try:
            return fn(self.value)
        except (ValueError, TypeError) as exc:
            detail = f" ({exc})" if str(exc) and repr(self.value) not in str(exc) else ""
            raise self.error(f"{self.value!r} is not {what}{detail}") from None

    def str_list(self) -> "list[builtins.str]":
        return [n.str() for n in self.items()]

    def __iter__(self) -> Iterator["Node"]:  # pragma: no cover - convenience
        return iter(self.items())


def _plain(node: yaml.Node) -> Any:
    """Python value of a node (scalars constructed by the safe loader)."""
    if isinstance(node, yaml.ScalarNode):
        return _CONSTRUCTOR.construct_object(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return [_plain(n) for n in node.value]
    if isinstance(node, yaml.MappingNode):
        return {_plain(k): _plain(v) for k, v in node.value}
    return None


class _Constructor(yaml.SafeLoader):
    def __init__(self) -> None:  # no stream: we only construct scalars
        yaml.constructor.SafeConstructor.__init__(self)


_CONSTRUCTOR = _Constructor()


def _kind(node: Optional[yaml.Node]) -> str:
    if node is None:
        return "nothing"
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    v = _plain(node)
    return "nothing (null)" if v is None else f"{type(v).__name__} {v!r}"


def _closest(key: str, allowed: AbstractSet[str]) -> Optional[str]:
    import difflib
    found = difflib.get_close_matches(key, sorted(allowed), n=1, cutoff=0.7)
    return found[0] if found else None


def parse_text(text: str, file: str = "<config>", path: str = "",
               allow_empty: bool = False) -> Node:
    """Root Node of a YAML document (safe loader); syntax errors are located.
    With ``allow_empty`` an empty document is a missing value (an empty list)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{file}{line}: YAML syntax error: {problem}") from None
    if root is None:
        if allow_empty:
            return Node(None, path, file, line=1)
        raise ConfigError(f"{file}: the configuration is empty")
    return Node(root, path, file)
