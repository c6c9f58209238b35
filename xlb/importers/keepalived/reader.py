"""Read keepalived.conf into lines of words, the way keepalived's own reader (lib/parser.c) sees it.

Pure: no bcc, no root. What it does, in keepalived's order, for each physical line:
- comments: ``#`` or ``!`` outside double quotes start a comment (``\\#`` and ``\\!`` escape them);
- ``@ID line`` is kept only when ID is the instance id (xlb has none, so such lines are dropped) and
  ``@^ID line`` only when it is not (so they are kept);
- ``$NAME=value`` defines a parameter (a trailing ``\\`` continues the value on the next line: a multi-line
  definition); ``$NAME`` and ``${NAME}`` are replaced, also ``${_RANDOM lo hi}`` (seeded, so one file always
  reads the same) and ``$_INSTANCE``/``$_PWD``;
- ``~SEQ(VAR, start, step, end) text`` (and ``~SEQx``, hexadecimal) repeats text with VAR set to each value;
- ``include PATTERN`` reads every file the glob matches, relative to the including file's directory;
- ``{`` and ``}`` are split off their line (``real_server 1.2.3.4 80 { weight 2 }`` is four lines).

Then xlb/importers/keepalived/tree.py nests the lines into keyword nodes. Problems found here are returned, never
raised, with the file and line they belong to. Whatever the input, a read takes bounded time and memory (the MAX_*
limits below; past one, reading stops and says where).
"""
from __future__ import annotations

import glob
import os
import random
import re
import stat
from dataclasses import dataclass

MAX_INCLUDE_DEPTH = 16
# Bounds on what one read may cost, whatever the input (keepalived has none: ~SEQ(i,1,1,100000000) runs it out of
# memory). Each is far above real configs (the largest in keepalived's test collection has some 2,000 lines).
MAX_FILE_BYTES = 16 * 2**20  # one file
MAX_FILES = 1024  # files read, includes included
MAX_LINES = 500_000  # lines after expansion, each brace counted (keepalived's 1173.conf makes 333,600)
MAX_EXPANSION = 1_000_000  # parameter substitutions, ~SEQ/~LST iterations (against self-referring definitions)
MAX_LINE_CHARS = 65_536  # one line, as written and after parameter substitution


@dataclass(frozen=True)
class Line:
    file: str
    line: int
    words: tuple


@dataclass
class ReadProblem:
    file: str
    line: int
    message: str
    everywhere: bool = False  # an error wherever it is (a file cut short), not only inside a virtual server


def split_words(text: str) -> tuple:
    """keepalived's alloc_strvec: whitespace-separated words, a double-quoted string is one word without quotes."""
    if '"' not in text:
        return tuple(text.split())
    words = []
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i] in " \t\f\v\r\n":
            i += 1
        if i >= n:
            break
        if text[i] == '"':
            j = text.find('"', i + 1)
            if j < 0:
                words.append(text[i + 1:])
                break
            words.append(text[i + 1:j])
            i = j + 1
        else:
            j = i
            while j < n and text[j] not in ' \t\f\v\r\n"':
                j += 1
            words.append(text[i:j])
            i = j
    return tuple(words)


def decomment(raw: str) -> tuple[str, bool, bool]:
    """Strip comments and surrounding blanks. Returns (text, continued, unterminated_quote).

    As keepalived: a trailing ``\\`` continues the line even after a comment has started.
    """
    s = raw.lstrip(" \t")
    if not any(c in s for c in '"\\#!'):
        return s.rstrip(" \t"), False, False
    out = []
    quote = False
    comment = False
    cont = False
    i = 0
    while i < len(s):
        c = s[i]
        if c == "\\":
            if i + 1 == len(s):
                cont = True
                break
            if not comment:
                if not quote and s[i + 1] in "#!":
                    out.append(s[i + 1])
                else:
                    out.append(s[i:i + 2])
            i += 2
            continue
        if not comment:
            if c == '"':
                quote = not quote
            elif not quote and c in "#!":
                comment = True
                i += 1
                continue
            out.append(c)
        i += 1
    text = "".join(out).rstrip(" \t")
    return text, cont, quote


_DEF_RE = re.compile(r"^\$([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$", re.S)
_REF_RE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)((?: +\d+){0,2})\}|([A-Za-z_][A-Za-z0-9_]*))")
_SEQ_RE = re.compile(r"^~SEQ(x?)\s*\(\s*([^\s,)]+)\s*,([^)]*)\)\s*(.*)$", re.S)


class Reader:
    """Turns a keepalived.conf (and what it includes) into a list of :class:`Line` s, recording problems."""

    def __init__(self, instance_id: str | None = None, seed: int = 0):
        self.instance_id = instance_id
        self.defs: dict[str, str] = {}
        self.multiline: set[str] = set()
        self.random = random.Random(seed)
        self.lines: list[Line] = []
        self.problems: list[ReadProblem] = []
        self.notes: list[ReadProblem] = []  # what keepalived logs and reads on: a skipped include
        self.files: list[str] = []
        self._expanded = 0
        self._over = False  # a bound was reached: read no further

    # --- files -------------------------------------------------------------------------------------------------

    def read(self, path: str, depth: int = 0, where: tuple | None = None) -> None:
        """Read one file; an included one (``where`` = the include line) only if keepalived would read it."""
        file, line = where or (path, 0)
        if self._over:
            return
        if len(self.files) >= MAX_FILES:
            self._stop(file, line, f"more than {MAX_FILES} files included")
            return
        try:
            st = os.stat(path)  # before open: opening a FIFO would block
            if not stat.S_ISREG(st.st_mode) or (where and st.st_mode & 0o111):
                if where is None:
                    self.problems.append(ReadProblem(path, 0, f"{path} is not a regular file"))
                else:  # keepalived: "... is not a regular non-executable file - skipping"
                    self.notes.append(ReadProblem(file, line, f"include: {path} is not a regular non-executable "
                                                              "file - skipping (as keepalived does)"))
                return
            with open(path, "rb") as f:
                raw = f.read(MAX_FILE_BYTES + 1)
        except OSError as e:
            self.problems.append(ReadProblem(file, line, f"cannot read {path}: {e.strerror or e}"))
            return
        if len(raw) > MAX_FILE_BYTES:
            self.problems.append(ReadProblem(file, line, f"{path} is larger than {MAX_FILE_BYTES >> 20} MiB"))
            return
        self.files.append(path)
        text = raw.decode("utf-8", errors="replace").removeprefix("\ufeff")
        pending_def = None  # name of a multi-line definition being continued
        for lineno, phys in enumerate(text.splitlines(), 1):
            if self._over:
                return
            if len(phys) > MAX_LINE_CHARS:
                self._stop(path, lineno, f"a line longer than {MAX_LINE_CHARS} characters")
                return
            body, cont, bad_quote = decomment(phys.rstrip("\r\n"))
            if bad_quote:
                self.problems.append(ReadProblem(path, lineno, f"unterminated quote: {body}"))
            if pending_def is not None:
                if body:
                    sep = "\n" if self.defs[pending_def] else ""
                    self.defs[pending_def] += sep + body
                if not cont:
                    if not self.defs[pending_def]:
                        self.multiline.discard(pending_def)
                    pending_def = None
                continue
            if not body:
                continue
            pending_def = self._logical(body, cont, path, lineno, depth)

    def _logical(self, text, cont, path, lineno, depth):
        """Process one decommented line; returns the name of a multi-line definition it starts, if any."""
        text = self._conditional(text)
        if text is None:
            return None
        m = _DEF_RE.match(text)
        if m:
            name, value = m.group(1), m.group(2)
            self.defs[name] = value
            if cont:
                self.multiline.add(name)
                return name
            self.multiline.discard(name)
            return None
        self._expand(text, path, lineno, depth, 0)
        return None

    def _conditional(self, text):
        """``@ID rest`` / ``@^ID rest``: the rest of the line if it applies to this instance, else None."""
        if not text.startswith("@"):
            return text
        neg = text.startswith("@^")
        m = re.match(r"@\^?(\S+)[ \t]+(.*)$", text, re.S)
        if not m:
            return None
        matches = self.instance_id is not None and m.group(1) == self.instance_id
        return m.group(2) if matches != neg else None

    def _expand(self, text, path, lineno, depth, level):
        """One line, as keepalived takes it: ``@``, a definition, ~SEQ/~LST, else substitute and hand on.

        A multi-line parameter is expanded line by line, so a definition among its lines applies to the lines
        after it (``$RS_NUM=2`` then ``$RS``), as in keepalived.
        """
        if "$" not in text and text[0] not in "@~":  # the common case: nothing to expand
            self._emit(text, path, lineno, depth)
            return
        text = self._conditional(text)
        if text is None or self._over:
            return
        self._expanded += 1
        if level > 200 or self._expanded > MAX_EXPANSION:
            self._stop(path, lineno, f"parameter expansion does not terminate (more than {MAX_EXPANSION} "
                                     "substitutions or ~SEQ/~LST steps, or definitions nested 200 deep)")
            return
        if len(text) > MAX_LINE_CHARS:
            self._stop(path, lineno, f"parameter substitution makes a line longer than {MAX_LINE_CHARS} characters")
            return
        m = _DEF_RE.match(text)
        if m:
            self.defs[m.group(1)] = m.group(2)
            self.multiline.discard(m.group(1))
            return
        if text.startswith("~LST"):
            self._lst(text, path, lineno, depth, level)
            return
        m = _SEQ_RE.match(text)
        if m:
            self._seq(m, text, path, lineno, depth, level)
            return
        if text.startswith("~SEQ"):
            self.problems.append(ReadProblem(path, lineno, f"invalid ~SEQ specification '{text}'"))
            return
        for m in _REF_RE.finditer(text):
            name = m.group(1) or m.group(3)
            if name not in self.multiline or name not in self.defs:
                continue
            lines = self.defs[name].split("\n")
            self._expand_all([self._substitute(text[:m.start()]) + lines[0] + text[m.end():]] + lines[1:],
                             path, lineno, depth, level)
            return
        new = self._substitute(text)
        if new != text:
            self._expand_all([new], path, lineno, depth, level)
            return
        self._emit(text, path, lineno, depth)

    def _expand_all(self, texts, path, lineno, depth, level):
        for part in texts:
            part, _, _ = decomment(part)
            if part:
                self._expand(part, path, lineno, depth, level + 1)

    def _seq(self, m, text, path, lineno, depth, level):
        hexa, var, params, body = m.group(1) == "x", m.group(2), m.group(3), m.group(4)
        params = self._substitute(params)
        try:
            nums = [int(p.strip(), 0) for p in params.split(",")]
        except ValueError:
            self.problems.append(ReadProblem(path, lineno, f"invalid ~SEQ definition '{text}'"))
            return
        if len(nums) == 1:
            end = nums[0]
            start, step = (-1 if end < 0 else 1), (-1 if end < 1 else 1)
        elif len(nums) == 2:
            start, end = nums
            step = 1 if start <= end else -1
        elif len(nums) == 3:
            start, step, end = nums
            if not step or (start < end and step < 0) or (start > end and step > 0):
                self.problems.append(ReadProblem(path, lineno, f"invalid ~SEQ values '{text}'"))
                return
        else:
            self.problems.append(ReadProblem(path, lineno, f"invalid ~SEQ definition '{text}'"))
            return
        count = max(0, (end - start) // step + 1)
        if count > MAX_LINES:
            self._stop(path, lineno, f"~SEQ of {count} values; xlb reads at most {MAX_LINES} lines")
            return
        v = start
        while ((step > 0 and v <= end) or (step < 0 and v >= end)) and not self._over:
            self.defs[var] = format(v, "x") if hexa else str(v)
            self._expand(body, path, lineno, depth, level + 1)
            v += step

    def _lst(self, text, path, lineno, depth, level):
        """``~LST({A,B},{a1,b1},{a2,b2}) text``: text once per value list, with A, B set from it."""
        m = re.match(r"~LST\s*\((.*)\)\s*(.*)$", text, re.S)
        groups = re.findall(r"\{([^}]*)\}", m.group(1)) if m else []
        if len(groups) < 2:
            self.problems.append(ReadProblem(path, lineno, f"invalid ~LST specification '{text}'"))
            return
        names = [n.strip() for n in groups[0].split(",")]
        for values in groups[1:]:
            vals = [x.strip() for x in values.split(",")]
            for name, val in zip(names, vals + [""] * len(names)):
                self.defs[name] = val
            self._expand(m.group(2), path, lineno, depth, level + 1)

    def _substitute(self, text):
        def repl(m):
            name = m.group(1) or m.group(3)
            if name == "_RANDOM":
                lo, hi = 0, 32767
                nums = [int(x) for x in (m.group(2) or "").split()]
                if len(nums) == 1:
                    hi = nums[0]
                elif len(nums) == 2:
                    lo, hi = nums
                return str(self.random.randint(min(lo, hi), max(lo, hi)))
            if name in ("_HASH", "_BANG") and name not in self.defs:
                return "#" if name == "_HASH" else "!"
            if name == "_INSTANCE" and name not in self.defs:
                return self.instance_id or ""
            if name == "_PWD" and name not in self.defs:
                return os.getcwd()
            if name in self.defs and name not in self.multiline:
                return self.defs[name]
            return m.group(0)
        return _REF_RE.sub(repl, text)

    def _stop(self, path, lineno, message):
        """A bound was reached: say where, once, and read no further (what was read is not a config to run)."""
        if not self._over:
            self._over = True
            self.problems.append(ReadProblem(path, lineno, message))

    def _emit(self, text, path, lineno, depth):
        if self._over:
            return
        if len(self.lines) >= MAX_LINES:
            self._stop(path, lineno, f"more than {MAX_LINES} lines (after include, ~SEQ and parameters)")
            return
        words = split_words(text)
        if not words:
            return
        if words[0] == "include" and len(words) == 2:
            self._include(words[1], path, lineno, depth)
            return
        for piece in split_braces(text):
            w = split_words(piece)
            if w:
                self.lines.append(Line(path, lineno, w))

    def _include(self, pattern, path, lineno, depth):
        if depth >= MAX_INCLUDE_DEPTH:
            self.problems.append(ReadProblem(path, lineno, f"include nested deeper than {MAX_INCLUDE_DEPTH} "
                                                           f"files (an include loop?): {pattern}"))
            return
        base = os.path.dirname(path)
        full = pattern if os.path.isabs(pattern) else os.path.join(base, pattern)
        matches = sorted(p for p in glob.glob(full) if not os.path.isdir(p))
        if not matches:
            self.problems.append(ReadProblem(path, lineno, f"include {pattern}: no file matches "
                                                           f"(looked for {full})"))
            return
        for p in matches:
            self.read(p, depth + 1, (path, lineno))


def split_braces(text: str) -> list[str]:
    """Split ``a { b }`` into ``a``, ``{``, ``b``, ``}`` as keepalived's read_line does (quotes protect braces)."""
    if "{" not in text and "}" not in text:
        return [text]
    out = []
    rest = text.strip()
    while rest:
        if rest[0] in "{}":
            out.append(rest[0])
            rest = rest[1:].strip()
            continue
        i, quote = 0, False
        while i < len(rest):
            c = rest[i]
            if c == '"':
                quote = not quote
            elif not quote and c in "{}":
                break
            i += 1
        out.append(rest[:i].rstrip())
        rest = rest[i:].strip()
    return out
