"""xlb's own exceptions: every error an operator sees is one of these, with a message they can act on."""


class XlbError(Exception):
    """Base of every error xlb reports to an operator."""


class ConfigError(XlbError):
    """A configuration was rejected; nothing was changed.

    `source` names the file, `where` the field path (``service[1].real[0].weight``) or ``line N``.
    """

    def __init__(self, source, where, message):
        self.source = source
        self.where = where
        self.message = message
        loc = f"{source}: {where}" if where else str(source)
        super().__init__(f"{loc}: {message}")


class KernelError(XlbError):
    """The kernel, bcc or netlink refused something (loading, attaching, map access)."""


class AttachError(KernelError):
    """The program could not be attached to (or detached from) an interface."""
