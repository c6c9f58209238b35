"""Announcing VIPs through an existing BGP speaker, BIRD 2: xlb owns one include file of static routes (one
`protocol static` per address family, a route per VIP) and makes BIRD re-read its configuration through the
control socket, speaking birdc's line protocol itself. The operator's bird.conf includes the file and exports
those protocols to its BGP sessions (docs/scale-out.md has a complete example).

BIRD's control socket: on connect BIRD greets with `0001 BIRD x.y ready.`; each command is one line; each reply
line is `CODE-text` (more follow), `CODE text` (the last one), ` text` (continues the previous code) or `+text`
(spontaneous). Codes 0xxx are success, 1xxx/2xxx table output, 8xxx run-time and 9xxx parse errors
(BIRD's doc/reply_codes). `configure` answers `0002-Reading configuration from FILE` then `0003 Reconfigured` (or
0004 in progress, 0005 queued), or `8002 FILE:LINE:COLUMN message` and keeps the running configuration.
"""

import ipaddress
import os
import socket
import tempfile

from xlb.errors import XlbError

PROTOCOLS = {4: "xlb_vips4", 6: "xlb_vips6"}  # the static protocols of the include file, by address family
MAX_LINE = 64 * 1024  # bytes of one reply line that we read (BIRD's own limit is lower)
MAX_LINES = 100_000  # reply lines of one command that we keep: a bound on memory, far above any `configure`
CONFIGURE_OK = {"0003", "0004", "0005", "0018", "0019"}  # reconfigured, in progress, queued, confirmed, nothing to do


class BirdError(XlbError):
    """BIRD could not be reached or refused a command; carries BIRD's own message."""


class BirdControl:
    """One connection to BIRD's control socket (`bird -s PATH`, default /run/bird/bird.ctl)."""

    def __init__(self, path, timeout=10.0):
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(path)
            self._file = self._sock.makefile("rb")
            hello = self._reply()
        except (OSError, BirdError) as e:
            self._sock.close()
            raise BirdError(f"BIRD control socket {path}: {e}") from e
        if hello[-1][0] != "0001":
            self.close()
            raise BirdError(f"BIRD control socket {path}: unexpected greeting {hello[-1][1]!r}")

    def _line(self):
        raw = self._file.readline(MAX_LINE)
        if not raw:
            raise BirdError("BIRD closed the connection")
        return raw.decode("utf-8", "replace").rstrip("\r\n")

    def _reply(self):
        """Reply lines up to the last one, as (code, text); a continuation takes its predecessor's code."""
        lines, code = [], None
        while True:
            line = self._line()
            if line.startswith("+"):
                continue  # spontaneous output, not part of this reply
            if line.startswith(" "):
                text, last = line[1:], False
            elif len(line) >= 5 and line[:4].isdigit() and line[4] in " -":
                code, text, last = line[:4], line[5:], line[4] == " "
            else:
                raise BirdError(f"BIRD sent a line outside its protocol: {line[:80]!r}")
            if len(lines) < MAX_LINES:
                lines.append((code, text))
            if last:
                return lines

    def command(self, text):
        """Send one command; return its reply lines, or raise BirdError with BIRD's message (codes 8xxx, 9xxx)."""
        if "\n" in text or "\r" in text:
            raise BirdError(f"a BIRD command is one line: {text!r}")
        try:
            self._sock.sendall(text.encode() + b"\n")
            lines = self._reply()
        except OSError as e:
            raise BirdError(f"BIRD control socket {self.path}: {text}: {e}") from e
        if lines[-1][0][0] in "89":
            raise BirdError(f"BIRD refused `{text}`: " + "; ".join(t for _, t in lines if t))
        return lines

    def configure(self):
        """Make BIRD re-read its configuration file; BirdError if it refuses it (the old one keeps running)."""
        lines = self.command("configure")
        if lines[-1][0] not in CONFIGURE_OK:
            raise BirdError("BIRD did not reconfigure: " + "; ".join(t for _, t in lines if t))
        return lines

    def close(self):
        for thing in (getattr(self, "_file", None), self._sock):
            if thing is not None:
                thing.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def render(vips):
    """The include file announcing `vips` (addresses): both static protocols, each route a host route."""
    by_family = {4: [], 6: []}
    for vip in sorted(vips, key=lambda a: (a.version, a)):
        by_family[vip.version].append(vip)
    out = ["# Written by xlb: the VIPs this node announces. xlb rewrites this file and runs `configure`;",
           "# include it from bird.conf and export these two protocols to the BGP sessions (docs/scale-out.md)."]
    for version, name in PROTOCOLS.items():
        out.append(f"protocol static {name} {{")
        out.append(f"\tipv{version};")
        out.extend(f"\troute {vip}/{vip.max_prefixlen} blackhole;" for vip in by_family[version])
        out.append("}")
    return "\n".join(out) + "\n"


def _write_atomically(path, text):
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".xlb-vips-", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class VipAnnouncer:
    """The set of VIPs this node announces through BIRD.

    `announce()`/`withdraw()`/`replace()` change the set, rewrite `include_path` and run `configure` on the BIRD
    at `socket_path`; a change that leaves the set as it was does nothing. If BIRD cannot be reached or refuses
    its configuration, the file is put back as it was, the set is unchanged and BirdError says why.
    """

    def __init__(self, include_path, socket_path="/run/bird/bird.ctl", timeout=10.0):
        self.include_path = include_path
        self.socket_path = socket_path
        self.timeout = timeout
        self.announced = frozenset()

    def start(self):
        """Write the file for an empty set without asking BIRD (before BIRD starts, or to reset it)."""
        _write_atomically(self.include_path, render(()))
        self.announced = frozenset()

    def forget(self):
        """Stop trusting what we think BIRD announces (a previous daemon's file, or an exchange that failed): the
        next replace() writes the file and runs `configure` even for the same set."""
        self.announced = None

    def announce(self, *vips):
        self.replace((self.announced or frozenset()) | _addresses(vips))

    def withdraw(self, *vips):
        self.replace((self.announced or frozenset()) - _addresses(vips))

    def withdraw_all(self):
        self.replace(())

    def replace(self, vips):
        wanted = frozenset(_addresses(vips))
        if wanted == self.announced and os.path.exists(self.include_path):
            return
        try:
            with open(self.include_path) as f:
                before = f.read()
        except FileNotFoundError:
            before = None
        _write_atomically(self.include_path, render(wanted))
        try:
            with BirdControl(self.socket_path, self.timeout) as bird:
                bird.configure()
        except BirdError:
            if before is None:
                os.unlink(self.include_path)
            else:
                _write_atomically(self.include_path, before)
            raise
        self.announced = wanted


def _addresses(vips):
    out = set()
    for vip in vips:
        try:
            out.add(ipaddress.ip_address(vip))
        except ValueError as e:
            raise BirdError(f"cannot announce {vip!r}: {e}") from e
    return out
