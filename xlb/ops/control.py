"""The daemon's local control socket: one JSON request per connection, one JSON reply.

`xlb run` serves a unix socket (root-only: the directory is 0700, the socket 0600, and the peer's uid is checked);
every other `xlb` command is a client. The daemon owns the maps; everything else asks it (house style 9).

Wire format: the client sends one line ``{"cmd": NAME, "args": {...}}``; the daemon answers one line
``{"ok": true, "result": ...}`` or ``{"ok": false, "error": MESSAGE}``, then closes.

Commands are plain functions listed in one table (xlb/ops/commands.py COMMANDS); they take the Daemon and keyword
arguments and return something JSON can encode. The daemon runs each under its lock, between timer sweeps and reloads, so a
command sees and changes a consistent state. A command rejects bad input by raising XlbError: its message goes back
to the client and nothing changes.
"""
import json
import os
import socket
import struct
import threading
from pathlib import Path

from ..errors import XlbError

RUN_DIR = Path("/run/xlb")
MAX_REQUEST = 16 * 2**20
def default_socket(iface):
    """/run/xlb/IFACE.sock, or /run/xlb/netns-NAME/IFACE.sock in a named network namespace (as the pin directory:
    /run is shared by every network namespace, interface names are not)."""
    from ..dataplane.pin import netns_dir
    d = netns_dir(iface, RUN_DIR)
    return d.with_name(d.name + ".sock")


def socket_dir():
    """Where this network namespace's daemons put their default sockets."""
    return default_socket("-").parent


class ControlError(XlbError):
    """The control socket could not be reached, or the daemon refused a command."""


def find_socket(path=None):
    """The socket to talk to: `path` when given, else the only one of this network namespace (socket_dir())."""
    if path:
        return Path(path)
    where = socket_dir()
    try:
        socks = sorted(p for p in where.iterdir() if p.name.endswith(".sock"))
    except (FileNotFoundError, NotADirectoryError):
        socks = []
    except PermissionError:  # the directory is root's and 0700: a daemon may well be running
        raise ControlError(f"cannot look for xlb's control socket in {where}/: permission denied; the control "
                           "socket is root-only, run this as root (e.g. with sudo)") from None
    if not socks:
        raise ControlError(f"no xlb daemon is running (no socket under {where}/); start one with `xlb run`")
    if len(socks) > 1:
        names = ", ".join(str(s) for s in socks)
        raise ControlError(f"several xlb daemons are running ({names}); choose one with --socket PATH")
    return socks[0]


def call(cmd, path=None, timeout=30.0, **args):
    """Send one command to the daemon and return its result; raise ControlError with the daemon's message."""
    sock_path = find_socket(path)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(str(sock_path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise ControlError(f"no xlb daemon answers at {sock_path} ({exc.strerror}); is `xlb run` running?") \
                from exc
        except PermissionError as exc:
            raise ControlError(f"{sock_path}: permission denied; the control socket is root-only, run this as root "
                               "(e.g. with sudo)") from exc
        try:
            s.sendall(json.dumps({"cmd": cmd, "args": args}).encode() + b"\n")
            s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the daemon answered before reading (a refused peer): its reply is waiting to be read
        data = _read_all(s)
    except socket.timeout as exc:
        raise ControlError(f"the xlb daemon at {sock_path} did not answer within {timeout:g}s") from exc
    except OSError as exc:
        raise ControlError(f"the xlb daemon at {sock_path} dropped the connection: {exc.strerror or exc}") from exc
    finally:
        s.close()
    try:
        reply = json.loads(data)
    except ValueError as exc:
        raise ControlError(f"the xlb daemon at {sock_path} sent an unreadable reply") from exc
    if not reply.get("ok"):
        raise ControlError(reply.get("error", "the daemon refused the command"))
    return reply.get("result")


def _read_all(s):
    chunks = []
    size = 0
    while True:
        b = s.recv(65536)
        if not b:
            return b"".join(chunks)
        size += len(b)
        if size > MAX_REQUEST:
            raise ControlError("control message too large")
        chunks.append(b)


class Server:
    """Accepts connections on a thread; `dispatch(cmd, args)` runs each command named in `commands` (the daemon
    serialises them)."""

    def __init__(self, path, dispatch, commands, log=print):
        self.path = Path(path)
        self.dispatch = dispatch
        self.commands = commands
        self.log = log
        self.sock = None
        self.thread = None

    def start(self):
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.path.parent, 0o700)
        if self.path.exists():
            if _answers(self.path):
                raise ControlError(f"another xlb daemon already serves {self.path}; stop it or use --socket")
            self.path.unlink()  # left behind by a daemon that died
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            s.bind(str(self.path))
        finally:
            os.umask(old)
        s.listen(16)
        self.sock = s
        self.thread = threading.Thread(target=self._serve, name="xlb-control", daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn):
        with conn:
            try:
                conn.settimeout(30)
                # Read the request even from a peer that is refused: closing a unix socket with unread data
                # resets the connection, and the client would get ECONNRESET instead of the reason.
                data = _read_all(conn)
                if not _peer_allowed(conn):
                    reply = {"ok": False, "error": "the control socket is root-only"}
                else:
                    reply = self._run(data)
                conn.sendall(json.dumps(reply).encode() + b"\n")
            except ControlError as exc:  # a request over MAX_REQUEST
                try:
                    conn.sendall(json.dumps({"ok": False, "error": str(exc)}).encode() + b"\n")
                except OSError:
                    pass
            except OSError:
                pass  # the client went away

    def _run(self, data):
        try:
            req = json.loads(data)
            cmd, args = req["cmd"], req.get("args") or {}
            if not isinstance(args, dict):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return {"ok": False, "error": "malformed request: expected {\"cmd\": NAME, \"args\": {...}}"}
        if cmd not in self.commands:
            return {"ok": False, "error": f"unknown command {cmd!r}"}
        try:
            return {"ok": True, "result": self.dispatch(cmd, args)}
        except XlbError as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:  # a bug: keep serving, tell the client and the log
            self.log(f"xlb: control command {cmd!r} failed: {exc!r}")
            return {"ok": False, "error": f"internal error in {cmd!r}: {exc!r} (a bug: please report it)"}

    def close(self):
        if self.sock:
            self.sock.close()
            self.sock = None
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass


def _peer_allowed(conn):
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid in (0, os.getuid())


def _answers(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1)
    try:
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()
