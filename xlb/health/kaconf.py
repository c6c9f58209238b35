"""keepalived.conf checker blocks (``TCP_CHECK { ... }`` as the config reader's nodes: ``keyword``, ``args``,
``children``, ``file``, ``line``) -> spec.Check, with every problem named by file, line and keyword, as
``keepalived -t`` would name it. Words become typed values the way keepalived reads them (timers may have
decimals, a bare ``alpha`` is true, ``misc_path`` takes the rest of the line), then spec.parse_check validates."""
import re

from ..errors import ConfigError
from . import spec as hspec

_INT = {"retry", "nb_get_retry", "connect_port", "bind_port", "min_reply_length", "max_reply_length", "weight"}
_TIMER = {"connect_timeout", "delay_before_retry", "delay_loop", "warmup", "misc_timeout"}
_FLAG = {"alpha", "log_all_failures", "fast_recovery", "enable_sni", "misc_dynamic", "regex_no_match"}
_REST = {"misc_path", "payload", "user"}   # the rest of the line is one value
_UNSUPPORTED = {"fwmark": "checker connections with a firewall mark", "bind_if": "binding checkers to an interface",
                "regex_options": "PCRE regex options", "regex_min_offset": "regex offsets",
                "regex_max_offset": "regex offsets", "regex_stack": "PCRE JIT stacks",
                "host": "SMTP_CHECK host sub-blocks (use one SMTP_CHECK per host)"}
_TRUE, _FALSE = ("true", "yes", "on"), ("false", "no", "off")
_URL_KEYS = ("path", "status_code", "digest", "regex", "regex_no_match", "virtualhost")


class Problem(ConfigError):
    """One problem of a checker block, said as the importer says its own: ``FILE: line N: KEYWORD: message``.
    ``kind``: "error" (keepalived -t reports it too), "unsupported" (keepalived runs it, xlb cannot) or "ignored"
    (keepalived drops the block with these words)."""

    def __init__(self, file, line, keyword, detail, kind="error"):
        tag = "not supported by xlb: " if kind == "unsupported" else ""
        super().__init__(file, keyword, f"{tag}{detail}", line=line)
        self.keyword, self.detail, self.kind = keyword, detail, kind


class _Block:
    def __init__(self, file):
        self.file = file
        self.problems = []
        self.lines = {}     # spec field path ("retry", "url[1].digest") -> (line, keyword)

    def problem(self, node, message, kind="error"):
        self.problems.append(Problem(self.file, node.line, node.keyword, message, kind))

    def value(self, node):
        kw, args = node.keyword, node.args
        if kw in _FLAG:
            if not args:
                return True
            word = args[0].lower()
            if word not in _TRUE + _FALSE:
                raise ValueError(f"'{args[0]}' is not true or false")
            return word in _TRUE
        if kw == "require_reply":
            return " ".join(args) if args else True     # bare: any reply will do
        if not args:
            raise ValueError("needs a value")
        if kw in _REST:
            return " ".join(args)
        if kw == "weight" and args[1:] == ("reverse",):      # FILE_CHECK: weight N reverse
            return [self.value(type(node)("weight", args[:1], node.file, node.line)), True]
        if kw == "status_code":
            return list(args)
        if len(args) > 1:
            raise ValueError(f"takes one value, got {' '.join(args)}")
        word = args[0].strip()       # keepalived's number readers skip blanks ("warmup \"  64\"")
        if kw in _INT:
            if not re.fullmatch(r"-?\d+", word):
                raise ValueError(f"'{args[0]}' is not an integer")
            return int(word)
        if kw in _TIMER:
            if not re.fullmatch(r"\d+(\.\d+)?", word):
                raise ValueError(f"'{args[0]}' is not a number of seconds")
            return float(word)
        return args[0]

    def table(self, nodes, allowed, prefix=""):
        out = {}
        for node in nodes or ():
            kw = node.keyword
            if kw in _UNSUPPORTED:
                self.problem(node, _UNSUPPORTED[kw], "unsupported")
                continue
            if kw not in allowed:
                self.problem(node, f"Unknown keyword '{kw}'")
                continue
            if kw == "url" and not prefix:
                i = len(out.setdefault("url", []))
                self.lines[f"url[{i}]"] = (node.line, kw)
                out["url"].append(self.table(node.children, _URL_KEYS, f"url[{i}]."))
                continue
            try:
                out[kw] = self.value(node)
            except ValueError as e:
                self.problem(node, str(e))
                continue
            if kw == "weight" and isinstance(out[kw], list):
                out["weight"], out["reverse"] = out[kw]
            self.lines[prefix + ("retry" if kw == "nb_get_retry" else kw)] = (node.line, kw)
            self.lines.setdefault(prefix + kw, (node.line, kw))
        return out


def parse(node, track_files=None):
    """(spec.Check or None, [Problem]) for one checker block node. ``track_files``: name -> (path, weight) of the
    config's global ``track_file`` blocks (:func:`track_files`), for FILE_CHECK."""
    _, check, problems = _read(node, track_files)
    return check, problems


def table(node, track_files=None):
    """(the block as a TOML ``check`` table, [Problem]): what the keepalived importer writes into xlb's config; the
    table is None when the block has problems (it was validated as :func:`parse` does)."""
    tbl, check, problems = _read(node, track_files)
    return (tbl if check is not None else None), problems


def track_files(nodes):
    """The global ``track_file NAME { file PATH weight W }`` blocks among ``nodes``: name -> (path, weight)."""
    out = {}
    for n in nodes:
        if n.keyword == "track_file" and n.args and n.children is not None:
            d = {c.keyword: c.args for c in n.children}
            if d.get("file"):
                weight = d["weight"][0] if d.get("weight") else "1"
                out[n.args[0]] = (d["file"][0], int(weight) if re.fullmatch(r"-?\d+", weight) else 1)
    return out


def _read(node, track_files):
    kind, block = node.keyword, _Block(node.file)
    if kind in hspec.UNSUPPORTED:
        block.problem(node, "BFD health checks", "unsupported")
        return None, None, block.problems
    common = () if kind == "FILE_CHECK" else hspec.TIMING + ("log_all_failures",)
    tbl = block.table(node.children, hspec.KIND_KEYS[kind] + common)
    if kind == "FILE_CHECK" and "track_file" in tbl:
        name = tbl["track_file"]
        if name not in (track_files or {}):
            line = block.lines["track_file"][0]
            block.problems.append(Problem(node.file, line, "track_file", f"track_file {name} not found"))
            return None, None, block.problems
        path, weight = track_files[name]
        tbl["track_file"] = path
        tbl.setdefault("weight", weight)
    if block.problems:
        return None, None, block.problems
    if kind in ("HTTP_GET", "SSL_GET") and not tbl.get("url"):
        # keepalived 2.2.7 runs it without urls; later versions drop it with these words (a real without
        # checkers is up, so both ways the block checks nothing)
        return None, None, [Problem(node.file, node.line, kind, "HTTP/SSL_GET checker has no urls specified - "
                                    "ignoring", "ignored")]
    tbl = dict(tbl, kind=kind)
    try:
        return tbl, hspec.parse_check(tbl, "", node.file), []
    except ConfigError as e:
        field = e.where.lstrip(".")
        line, kw = _locate(block.lines, field, node)
        unknown = e.message.startswith("unknown key")
        block.problems.append(Problem(node.file, line, kw, f"Unknown keyword '{kw}'" if unknown else e.message))
        return None, None, block.problems


def _locate(lines, field, node):
    """The line and keyword of the deepest known prefix of ``field`` (``url[1].digest``, ``status_code[2]``)."""
    parts = field.split(".")
    for n in range(len(parts), 0, -1):
        path = ".".join(parts[:n])
        for key in (path, re.sub(r"\[\d+\]$", "", path)):
            if key in lines:
                return lines[key]
    return node.line, node.keyword
