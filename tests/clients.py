"""Clients only the tests use against the lab's servers (xlb/lab/servers.py): one UDP question, and a long-lived TCP
connection held by a forked child in a namespace (LineConnection, with tcp_line_name_server)."""
import ipaddress
import socket

from xlb.errors import KernelError
from xlb.lab.process import PipedChild, enter_netns, pack_exception, unpack_exception


def family_of(addr):
    return socket.AF_INET6 if ipaddress.ip_address(addr).version == 6 else socket.AF_INET


def udp_ask(src, dst, port, timeout=3.0, payload=b"?\n"):
    """Send one datagram from `src` to dst:port and return the stripped reply (only one from dst counts)."""
    with socket.socket(family_of(dst), socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        if src:
            s.bind((src, 0))
        s.connect((dst, port))
        s.send(payload)
        return s.recv(4096).decode().strip()


def _line_client(conn, ns, src, dst, port, timeout):
    try:
        enter_netns(ns)
        s = socket.socket(family_of(dst), socket.SOCK_STREAM)
        s.settimeout(timeout)
        if src:
            s.bind((src, 0))
        s.connect((dst, port))
        f = s.makefile("rb")
        conn.send(("ok", None))
    except BaseException as e:  # noqa: BLE001
        conn.send(("err",) + pack_exception(e))
        return
    while True:
        try:
            cmd = conn.recv()
        except EOFError:
            break
        if cmd is None:
            break
        try:
            s.sendall(cmd.encode() + b"\n")
            line = f.readline()
            if not line:
                raise ConnectionError("connection closed by the server")
            conn.send(("ok", line.decode().strip()))
        except BaseException as e:  # noqa: BLE001
            conn.send(("err",) + pack_exception(e))
    s.close()


class LineConnection(PipedChild):
    """One long-lived TCP connection from `src` in namespace `ns` to dst:port, held by a forked child.

    `ask(text)` sends one line and returns the stripped reply line (raises on a dead connection).
    Pairs with tcp_line_name_server. Usable as a context manager; close() is idempotent.
    """

    def __init__(self, ns, src, dst, port, timeout=3.0):
        super().__init__(_line_client, ns, src, dst, port, timeout)
        self._result()

    def _result(self):
        if not self._conn.poll(30):
            self.close()
            raise KernelError("line client did not answer within 30s")
        try:
            msg = self._conn.recv()
        except EOFError:
            self.close()
            raise KernelError("line client died") from None
        if msg[0] == "ok":
            return msg[1]
        raise unpack_exception(msg[1], msg[2])

    def ask(self, text="?"):
        self._conn.send(text)
        return self._result()
