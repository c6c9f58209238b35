"""xlb's own exceptions: every error an operator sees is one of these, with a message they can act on."""


class XlbError(Exception):
    """Base of every error xlb reports to an operator."""


class ConfigError(XlbError):
    """A configuration was rejected; nothing was changed.

    `source` names the file, `where` the field path (``service[1].real[0].weight``) or ``line N``, `line` the
    line of that field when known.
    """

    def __init__(self, source, where, message, line=None):
        self.source = source
        self.where = where
        self.message = message
        self.line = line  # the line of the field `where` in the source, when known (xlb/config/tomlpos.py)
        loc = ": ".join(str(p) for p in (source, line is not None and f"line {line}", where) if p)
        super().__init__(f"{loc}: {message}")


class KernelError(XlbError):
    """The kernel, bcc or netlink refused something (loading, attaching, map access)."""


class AttachError(KernelError):
    """The program could not be attached to (or detached from) an interface."""


def brief(exc: BaseException, limit: int = 200) -> str:
    """One short line for an unexpected exception (its type and the start of its message), never a traceback."""
    text = str(exc).strip().splitlines()[0][:limit] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
