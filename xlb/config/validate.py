"""The config reader's validation context, shared by its modules (read.py: the document and its services;
settings.py: the node-wide tables; marks.py: the mark rules): every failure is a ``ConfigError`` naming the source
and the field path (``service[1].real[0].weight``), and unknown keys are errors with a did-you-mean hint.
"""
import difflib
import ipaddress
import re

from .model import show_value
from ..errors import ConfigError


def join(where, key):
    return f"{where}.{key}" if where else key


class Validator:
    """Validation context: knows the source and produces ConfigErrors with field paths."""

    def __init__(self, source):
        self.source = source

    def fail(self, where, message):
        raise ConfigError(self.source, where, message)

    def table(self, value, where, allowed) -> dict:
        """Check ``value`` is a table with only ``allowed`` keys; return it."""
        if not isinstance(value, dict):
            self.fail(where, f"must be a table, got {show_value(value)}")
        for key in value:
            if key not in allowed:
                hint = difflib.get_close_matches(key, allowed, n=1)
                did = f"did you mean '{hint[0]}'? " if hint else ""
                self.fail(join(where, key), f"unknown key '{key}'; {did}allowed here: {', '.join(allowed)}")
        return value

    def array_of_tables(self, tbl, where, key):
        """Yield (where, item) for ``[[key]]``; missing = empty."""
        items = tbl.get(key, [])
        path = join(where, key)
        if not isinstance(items, list):
            header = re.sub(r"\[\d+\]", "", path)  # service[0].real -> service.real
            self.fail(path, f"must be an array of tables (write [[{header}]]), got {show_value(items)}")
        for i, item in enumerate(items):
            yield f"{path}[{i}]", item

    def integer(self, tbl, where, key, lo, hi, default=None, required=False):
        """An integer field in lo..hi (booleans are not integers here)."""
        if key not in tbl:
            if required:
                self.fail(join(where, key), f"{key} is required (an integer {lo}..{hi})")
            return default
        value = tbl[key]
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            self.fail(join(where, key), f"{key} must be an integer {lo}..{hi}, got {show_value(value)}")
        return value

    def choice(self, tbl, where, key, choices, default=None, required=False):
        """A string field from a fixed set."""
        if key not in tbl:
            if required:
                self.fail(join(where, key), f"{key} is required (one of: {', '.join(choices)})")
            return default
        value = tbl[key]
        if value not in choices:
            self.fail(join(where, key), f"{key} must be one of: {', '.join(choices)}; got {show_value(value)}")
        return value

    def flag(self, tbl, where, key, default):
        if key not in tbl:
            return default
        value = tbl[key]
        if not isinstance(value, bool):
            self.fail(join(where, key), f"{key} must be true or false, got {show_value(value)}")
        return value


def no_zone(v, addr, where, suffix=""):
    """Refuse an IPv6 zone index ("fe80::1%eth0"): the maps hold 16 bytes, so it would be silently dropped there,
    and two spellings of one address would pass as two (duplicate services, reals, conflicting mark rules)."""
    zone = getattr(addr, "scope_id", None)
    if zone:
        plain = ipaddress.IPv6Address(addr.packed)
        v.fail(where, f"a zone index (\"%{zone}\") has no meaning here; write \"{plain}{suffix}\"")
    return addr
