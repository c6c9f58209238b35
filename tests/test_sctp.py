"""SCTP services: the common header's ports and the first chunk's type through BPF_PROG_TEST_RUN (this kernel has
no SCTP sockets: Errno 93, so fixtures with exact bytes stand in for an association), and the config, ipvsadm and
keepalived sides. DR forwards an SCTP packet unchanged to the real's MAC; the association's state follows its
chunks as a TCP connection's follows its flags (INIT: syn, others: established, SHUTDOWN*/ABORT: closing)."""
import ipaddress

import pytest
from harness import CLIENT_MAC, LB_MAC, describe, tcp4, to_real, vs, write
from scapy.layers.inet import IP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.layers.sctp import (SCTP, SCTPChunkAbort, SCTPChunkCookieEcho, SCTPChunkData, SCTPChunkInit,
                               SCTPChunkShutdown)

from xlb.config import read as xread
from xlb.config.model import addr_bytes
from xlb.dataplane.mapkeys import htons
from xlb.dataplane import structs as S
from xlb.errors import ConfigError
from xlb.ops import admin, ipvsadm, ipvslist

R1, R2 = "198.18.0.11", "198.18.0.12"
R6 = "2001:db8::11"


def sctp_service(vip, reals, extra=""):
    return (f'[[service]]\nvip = "{vip}"\nport = 3868\nproto = "sctp"\n{extra}'
            + "".join(f'[[service.real]]\naddress = "{a}"\n' for a in reals))


CFG = sctp_service("198.51.100.10", (R1, R2), 'scheduler = "rr"\n') + sctp_service("2001:db8:100::10", (R6,))


def sctp4(chunk, src="203.0.113.7", sport=40000, dport=3868, dst="198.51.100.10"):
    return Ether(dst=LB_MAC, src=CLIENT_MAC) / IP(src=src, dst=dst, id=1) / SCTP(sport=sport, dport=dport,
                                                                                 tag=0x1234) / chunk


def sctp6(chunk, sport=40000):
    return Ether(dst=LB_MAC, src=CLIENT_MAC) / IPv6(src="2001:db8:77::7", dst="2001:db8:100::10") / SCTP(
        sport=sport, dport=3868, tag=0x1234) / chunk


def conn_state(dp, pkt):
    """The state name of pkt's association in the connection table."""
    ip, sh = pkt[IP], pkt[SCTP]
    key = S.ConnKey(src=S.addr_words(addr_bytes(ip.src)), dst=S.addr_words(addr_bytes(ip.dst)),
                    sport=htons(sh.sport), dport=htons(sh.dport), proto=132, family=4)
    c = dp.m["conns"].get(key)
    return None if c is None else {v: k for k, v in S.CONN_STATE.items()}[c.state]


def run_exact(bench, pkt, real):
    action, out = bench.run(pkt)
    want = to_real(pkt, real)
    assert action == "XDP_TX" and out == want, f"got {action}\n{describe(out)}\nwant\n{describe(want)}"


def test_an_association_follows_its_chunks_on_one_real(bench):
    dp = bench.reset(CFG)
    run_exact(bench, sctp4(SCTPChunkInit(init_tag=7, a_rwnd=65535, n_out_streams=1, n_in_streams=1, init_tsn=1)), R1)
    assert conn_state(dp, sctp4(SCTPChunkInit())) == "syn"
    run_exact(bench, sctp4(SCTPChunkCookieEcho(cookie=b"c" * 8)), R1)
    assert conn_state(dp, sctp4(SCTPChunkInit())) == "est"
    run_exact(bench, sctp4(SCTPChunkData(tsn=1, data=b"diameter")), R1)
    run_exact(bench, sctp4(SCTPChunkShutdown(cumul_tsn_ack=1)), R1)
    assert conn_state(dp, sctp4(SCTPChunkInit())) == "fin"
    # A new INIT on the closed association's tuple is a new association: scheduled afresh (rr: the next real).
    run_exact(bench, sctp4(SCTPChunkInit(init_tag=8)), R2)
    assert conn_state(dp, sctp4(SCTPChunkInit())) == "syn"
    svc_key = ("sctp", ipaddress.ip_address("198.51.100.10"), 3868)
    assert dp.real_conn_counts()[dp.real_ids.get((svc_key, ipaddress.ip_address(R2), 0))] == (0, 1)


def test_ipv6_and_a_second_association(bench):
    bench.reset(CFG)
    run_exact(bench, sctp6(SCTPChunkInit(init_tag=7)), R6)
    run_exact(bench, sctp4(SCTPChunkInit(), sport=40001), R1)
    run_exact(bench, sctp4(SCTPChunkInit(), sport=40002), R2)


def test_abort_for_no_association_is_dropped_and_malformed_packets_counted(bench):
    bench.reset(CFG)
    assert bench.run(sctp4(SCTPChunkAbort()))[0] == "XDP_DROP"
    common_only = Ether(dst=LB_MAC, src=CLIENT_MAC) / IP(src="203.0.113.7", dst="198.51.100.10", id=1) / SCTP(
        sport=40000, dport=3868, tag=1)
    assert len(bytes(common_only[SCTP])) == 12
    assert bench.run(common_only)[0] == "XDP_DROP"
    not_ours = common_only.copy()
    not_ours[IP].dst = "192.0.2.99"
    assert bench.run(not_ours)[0] == "XDP_PASS"
    # SCTP to a port with only a TCP service, and TCP to the SCTP service's port: neither is the other's.
    assert bench.run(sctp4(SCTPChunkInit(), dport=80))[0] == "XDP_PASS"
    assert bench.run(tcp4(dport=3868))[0] == "XDP_PASS"
    assert bench.verdicts() == {"drop_rst_no_conn": 1, "drop_trunc_l4": 1, "pass_no_service": 3}


def test_config_refuses_nat_for_sctp_and_round_trips():
    cfg = xread.parse(CFG, "<t>")
    assert [s.proto for s in cfg.services] == ["sctp", "sctp"]
    with pytest.raises(ConfigError) as e:
        xread.parse(CFG.replace('scheduler = "rr"', 'scheduler = "rr"\nmethod = "nat"'), "<t>")
    assert e.value.where == "service[0].method" and "CRC32c" in e.value.message


def test_ipvsadm_sctp_service_and_save():
    (op,) = ipvsadm.parse("-A --sctp-service 198.51.100.10:3868 -s rr".split()).ops
    assert op["service"] == {"proto": "sctp", "vip": "198.51.100.10", "port": 3868}
    cfg = admin.apply_ops(xread.parse("", "<t>"), [op, {"op": "real-add", "service": op["service"],
                                                          "address": R1, "port": None, "weight": 1}])
    svc = cfg.services[0]
    assert (svc.proto, svc.name) == ("sctp", "sctp/198.51.100.10:3868")
    assert ipvslist.svc_name({"fwmark": None, "family": 4, "vip": "198.51.100.10", "port": 3868, "proto": "sctp"},
                            rule=True) == "--sctp-service 198.51.100.10:3868"
    with pytest.raises(ConfigError) as e:
        ipvsadm.parse("-A -t 198.51.100.10:80 --sctp-service 198.51.100.10:3868".split())
    assert e.value.where == "--sctp-service"


def test_keepalived_protocol_sctp(tmp_path):
    from xlb.importers.keepalived import translate
    p = write(tmp_path, vs("protocol SCTP\nlb_algo rr\nlb_kind DR\nreal_server 198.18.0.11 3868 { }\n",
                           head="virtual_server 198.51.100.10 3868"))
    imp = translate.load(p)
    assert [(s.proto, s.port) for s in imp.config.services] == [("sctp", 3868)]
