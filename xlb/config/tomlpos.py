"""Where a field of a TOML config is written: the line of ``service[1].real[0].weight`` in the source text.

Pure. tomllib gives values without positions, so this reads the text once more, only for what positions need:
table headers (``[tables]``, ``[[service]]``, ``[[service.real]]``, counted the way TOML numbers the entries of an
array of tables) and the keys at the start of a line, skipping what is inside strings, comments and multi-line
arrays or inline tables. A path it cannot find exactly (a key inside an inline table or an array element) gets
the line of the closest enclosing thing it found; nothing found gives None.
"""
from __future__ import annotations

import re

from ..errors import ConfigError

_BARE = re.compile(r"[A-Za-z0-9_-]+")
_STEP = re.compile(r"([^.\[\]]+)(?:\[(\d+)\])?")


def _key_parts(text: str) -> list[str]:
    """``a."b c".d`` -> ["a", "b c", "d"] (a TOML dotted key, bare or quoted parts)."""
    parts, i = [], 0
    while i < len(text):
        c = text[i]
        if c in " \t.":
            i += 1
        elif c in "\"'":
            j = text.find(c, i + 1)
            j = len(text) if j < 0 else j
            parts.append(text[i + 1:j])
            i = j + 1
        else:
            m = _BARE.match(text, i)
            if not m:
                break
            parts.append(m.group(0))
            i = m.end()
    return parts


def _join(base, name):
    return f"{base}.{name}" if base else name


def _logical_lines(text: str):
    """(line number, the text of each line that starts outside any multi-line value or string, comment cut)."""
    depth = 0  # inside [ ] or { } of a value spanning lines
    quote = None  # '"""', "'''" while inside a multi-line string
    for lineno, line in enumerate(text.split("\n"), 1):
        out, i, start_depth, start_quote = [], 0, depth, quote
        while i < len(line):
            if quote:
                end = line.find(quote, i)
                if end < 0:
                    i = len(line)
                    break
                i, quote = end + len(quote), None
                out.append('""')
                continue
            c = line[i]
            if line.startswith(('"""', "'''"), i):
                quote = line[i:i + 3]
                i += 3
                continue
            if c in "\"'":
                j = i + 1
                while j < len(line) and line[j] != c:
                    j += 2 if c == '"' and line[j] == "\\" else 1
                out.append(line[i:j + 1])  # kept: a quoted key needs its text
                i = j + 1
                continue
            if c == "#":
                break
            if c in "[{" and (depth or "=" in "".join(out)):  # a value's bracket, not a table header's
                depth += 1
            elif c in "]}" and depth:
                depth -= 1
            out.append(c)
            i += 1
        if start_depth == 0 and start_quote is None:
            yield lineno, "".join(out).strip()


def positions(text: str) -> dict:
    """{field path: line} for every table header and every key written at the start of a line."""
    pos, counts = {}, {}
    table = ""
    for lineno, line in _logical_lines(text):
        if line.startswith("["):
            array = line.startswith("[[")
            inner = line.strip("[] \t")
            cur = ""
            parts = _key_parts(inner)
            for name in parts[:-1]:
                cur = _join(cur, name)
                if cur in counts:
                    cur = f"{cur}[{counts[cur] - 1}]"
            if not parts:
                continue
            cur = _join(cur, parts[-1])
            if array:
                counts[cur] = counts.get(cur, 0) + 1
                cur = f"{cur}[{counts[cur] - 1}]"
            table = cur
            pos.setdefault(table, lineno)
        elif "=" in line:
            key = ".".join(_key_parts(line.split("=", 1)[0]))
            if key:
                pos.setdefault(_join(table, key), lineno)
    return pos


def line_of(text: str, where: str) -> int | None:
    """The line of field path ``where`` in TOML ``text``, or of the closest enclosing field written there."""
    if not where:
        return None
    pos = positions(text)
    steps = [(m.group(1), m.group(2)) for m in _STEP.finditer(where)]
    for n in range(len(steps), 0, -1):
        for with_index in (True, False):
            path = ""
            for i, (name, index) in enumerate(steps[:n]):
                path = _join(path, name)
                if index is not None and (i < n - 1 or with_index):
                    path = f"{path}[{index}]"
            if path in pos:
                return pos[path]
    return None


def located(e: ConfigError, text: str) -> ConfigError:
    """``e`` with the line of its field in ``text`` (unchanged if it names a line already or none is found)."""
    if e.line is not None or not e.where or e.where.startswith("line "):
        return e
    line = line_of(text, e.where)
    return e if line is None else ConfigError(e.source, e.where, e.message, line=line)
