"""Small servers for the labs: a TCP/UDP server that answers with its name, one that keeps a line open, and the
TCP client that asks the first (run in a namespace with xlb.lab.process). Clients only the tests use live in
tests/clients.py.
"""
import ipaddress
import selectors
import socket
import struct
import time

from .process import notifies_ready, notify_ready

IP_FREEBIND = 15
IPV6_FREEBIND = 78
IP_PKTINFO = 8
IPV6_RECVPKTINFO = 49
IPV6_PKTINFO = 50


def _family(addr):
    return socket.AF_INET6 if ipaddress.ip_address(addr).version == 6 else socket.AF_INET


def _bound_socket(addr, port, kind):
    fam = _family(addr)
    s = socket.socket(fam, kind)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if fam == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
    else:
        s.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
    if kind == socket.SOCK_DGRAM:
        # Reply from the address the query was sent to (a wildcard socket would otherwise pick a source
        # by route, which is wrong for a VIP on lo in direct routing).
        if fam == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
        else:
            s.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    s.bind((addr, port))
    if kind == socket.SOCK_STREAM:
        s.listen(128)
    s.setblocking(False)
    return s


def _udp_reply(sock, payload):
    try:
        _, anc, _, peer = sock.recvmsg(2048, socket.CMSG_SPACE(64))
    except BlockingIOError:
        return
    out = []
    for level, ctype, data in anc:
        if level == socket.IPPROTO_IP and ctype == IP_PKTINFO:
            # struct in_pktinfo { int ifindex; in_addr spec_dst; in_addr addr; }: reply from addr.
            out = [(level, ctype, struct.pack("i4s4s", 0, data[8:12], b"\0" * 4))]
        elif level == socket.IPPROTO_IPV6 and ctype == IPV6_PKTINFO:
            # struct in6_pktinfo { in6_addr addr; int ifindex; }
            out = [(level, IPV6_PKTINFO, struct.pack("16si", data[:16], 0))]
    try:
        sock.sendmsg([payload], out, 0, peer)
    except OSError:
        pass


@notifies_ready
def tcp_echo_name_server(name, addresses_ports):
    """Serve forever: on every (address, port), TCP answers `name\\n` and closes; UDP replies `name\\n`.

    Addresses may be wildcards ("0.0.0.0", "::") or addresses not (yet) configured, e.g. a VIP on lo
    (sockets use IP_FREEBIND). Run it with Topology.spawn() / NetnsProcess; stops on SIGTERM.
    """
    payload = f"{name}\n".encode()
    sel = selectors.DefaultSelector()
    for addr, port in addresses_ports:
        sel.register(_bound_socket(addr, port, socket.SOCK_STREAM), selectors.EVENT_READ, "tcp")
        sel.register(_bound_socket(addr, port, socket.SOCK_DGRAM), selectors.EVENT_READ, "udp")
    notify_ready()
    while True:
        for key, _ in sel.select():
            sock = key.fileobj
            if key.data == "udp":
                _udp_reply(sock, payload)
                continue
            try:
                conn, _ = sock.accept()
            except BlockingIOError:
                continue
            try:
                conn.settimeout(1.0)
                conn.sendall(payload)
                conn.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            finally:
                conn.close()


def tcp_ask(src, dst, port, timeout=3.0):
    """Connect from `src` (port 0; None: any) to dst:port, read to EOF, return the stripped text."""
    with socket.socket(_family(dst), socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        if src:
            s.bind((src, 0))
        s.connect((dst, port))
        chunks = []
        while True:
            data = s.recv(4096)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks).decode().strip()


@notifies_ready
def ask_lines(socks, timeout):
    """Send "?" on every connected socket (left non-blocking) and read one line back from each within `timeout`;
    the lines in order, each the reply's first line, or "error: ..." for a connection that failed, closed or gave
    no line in time (tcp_line_name_server answers every line with its name)."""
    replies = [None] * len(socks)
    bufs = [b""] * len(socks)
    sel = selectors.DefaultSelector()
    for i, s in enumerate(socks):
        try:
            s.sendall(b"?\n")
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ, i)
        except OSError as e:
            replies[i] = f"error: {e}"
    deadline = time.monotonic() + timeout
    while sel.get_map() and time.monotonic() < deadline:
        for key, _ in sel.select(max(0.0, deadline - time.monotonic())):
            i = key.data
            try:
                data = key.fileobj.recv(4096)
            except BlockingIOError:
                continue
            except OSError as e:
                data, replies[i] = b"", f"error: {e}"
            if not data:
                replies[i] = replies[i] or "error: closed"
                sel.unregister(key.fileobj)
                continue
            bufs[i] += data
            if b"\n" in bufs[i]:
                replies[i] = bufs[i].split(b"\n", 1)[0].decode()
                sel.unregister(key.fileobj)
    sel.close()
    return [r if r is not None else "error: no answer" for r in replies]


def tcp_line_name_server(name, addresses_ports):
    """Serve forever: keep each TCP connection open and answer every line received with `name\\n`.

    For long-lived connection tests (reloads under live traffic). Same addressing rules as
    tcp_echo_name_server; stops on SIGTERM.
    """
    payload = f"{name}\n".encode()
    sel = selectors.DefaultSelector()
    for addr, port in addresses_ports:
        sel.register(_bound_socket(addr, port, socket.SOCK_STREAM), selectors.EVENT_READ, None)
    notify_ready()
    while True:
        for key, _ in sel.select():
            sock = key.fileobj
            if key.data is None:  # a listener
                try:
                    conn, _ = sock.accept()
                except BlockingIOError:
                    continue
                conn.setblocking(False)
                sel.register(conn, selectors.EVENT_READ, bytearray())
                continue
            buf = key.data
            try:
                data = sock.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                sel.unregister(sock)
                sock.close()
                continue
            buf += data
            while b"\n" in buf:
                del buf[: buf.index(b"\n") + 1]
                try:
                    sock.settimeout(1.0)
                    sock.sendall(payload)
                    sock.setblocking(False)
                except OSError:
                    pass
