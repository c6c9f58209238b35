"""IPv4 without DF too big for the tunnel, with real kernels (bpf/tun.h, reason tun_ptb_no_df): in the DR lab whose
real runs `xlb decap`, a 3000-byte UDP datagram the client's kernel fragments to the 1500-byte MTU does not fit an
IPIP tunnel over the same MTU. xlb cannot fragment; it answers the first fragment with frag-needed (MTU 1480), the
client's kernel lowers its path MTU, and the next datagram, fragmented to fit, reaches the real's socket whole."""
import hashlib
import socket

from conftest import needs_root
from harness import DrLab, read_until, start_decap, stop_proc
from xlb.lab.demo import CLIENTS4, REALS4, VIP4
from xlb.lab.process import notifies_ready, notify_ready, run_in_netns

PORT = 5353
BIG = bytes(i * 7 % 251 for i in range(3000))
START_TIMEOUT = 120.0


@notifies_ready
def digest_server():
    """On VIP:PORT: answer each datagram with `length sha256-prefix` of what arrived."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((VIP4, PORT))
    notify_ready()
    while True:
        data, peer = s.recvfrom(65535)
        s.sendto(f"{len(data)} {hashlib.sha256(data).hexdigest()[:16]}".encode(), peer)


def send_twice(src):
    """BIG to VIP:PORT from an unconnected socket (a connected one would report the frag-needed as EMSGSIZE), once
    and, if no answer came, once more: [answer or None for each sending]."""
    out = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.bind((src, 0))
        for _ in range(2):
            s.sendto(BIG, (VIP4, PORT))
            try:
                out.append(s.recv(200).decode())
                break
            except socket.timeout:
                out.append(None)
    return out


@needs_root
def test_a_datagram_too_big_for_the_tunnel_arrives_once_the_client_knows_the_mtu():
    config = (f'[[service]]\nvip = "{VIP4}"\nport = {PORT}\nproto = "udp"\nscheduler = "rr"\nmethod = "tun"\n'
              f'tunnel_type = "ipip"\n  [[service.real]]\n  address = "{REALS4[0]}"\n')
    with DrLab(prefix="xtm", reals=1) as lab:
        decap = start_decap(lab.rs[0], "--iface", "eth0", "--xdp-mode", "generic")
        try:
            assert read_until(decap, "xlb decap: on eth0", START_TIMEOUT), f"decap: {stop_proc(decap)}"
            lab.topo.spawn(lab.rs[0], digest_server)
            lab.start_xlb(config)
            got = run_in_netns(lab.cl, send_twice, CLIENTS4[0])
            assert got == [None, f"3000 {hashlib.sha256(BIG).hexdigest()[:16]}"], got
        finally:
            stop_proc(decap)
