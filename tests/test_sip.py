"""persistence_engine sip (IPVS's ip_vs_pe_sip) through BPF_PROG_TEST_RUN with exact bytes: a UDP datagram is placed
by the template of its Call-ID (long or compact header, any case) and the client under the netmask; datagrams
without a usable Call-ID are dropped and counted, as IPVS drops them. Then the config, ipvsadm and keepalived."""
import pytest
from harness import describe, to_real, udp4, vs, write

from xlb.config import read as xread
from xlb.dataplane import structs as S
from xlb.dataplane.mapkeys import NS, now_ns
from xlb.errors import ConfigError
from xlb.importers.keepalived import translate
from xlb.ops import admin, ipvsadm, ipvslist

R1, R2 = "198.18.0.11", "198.18.0.12"


def cfg(netmask=None):
    mask = f'persistence_netmask = "{netmask}"\n' if netmask else ""
    return (f'[[service]]\nvip = "198.51.100.10"\nport = 5060\nproto = "udp"\nscheduler = "rr"\n'
            f'persistence_timeout = 300\npersistence_engine = "sip"\n{mask}'
            + "".join(f'[[service.real]]\naddress = "{a}"\n' for a in (R1, R2)))


def sip(callid_line, src="203.0.113.7", method=b"INVITE"):
    body = (method + b" sip:bob@198.51.100.10 SIP/2.0\r\nVia: SIP/2.0/UDP 203.0.113.7:5060;branch=z9hG4bK1\r\n"
            b"Max-Forwards: 70\r\nTo: <sip:bob@198.51.100.10>\r\nFrom: <sip:alice@203.0.113.7>;tag=1\r\n"
            + callid_line + b"CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")
    return udp4(src=src, sport=5060, dport=5060, payload=body)


def goes_to(bench, pkt):
    action, out = bench.run(pkt)
    for real in (R1, R2):
        if action == "XDP_TX" and out == to_real(pkt, real):
            return real
    return action if action != "XDP_TX" else describe(out)


def test_datagrams_follow_their_call_id_not_their_tuple(bench):
    dp = bench.reset(cfg())
    assert goes_to(bench, sip(b"Call-ID: a84b4c76e66710@pc33.example.com\r\n")) == R1
    assert goes_to(bench, sip(b"Call-ID: f81d4fae-7dec-11d0-a765\r\n")) == R2           # same tuple, new call
    assert goes_to(bench, sip(b"i: a84b4c76e66710@pc33.example.com\r\n", method=b"ACK")) == R1   # compact form
    assert goes_to(bench, sip(b"call-id:   f81d4fae-7dec-11d0-a765\r\n", method=b"BYE")) == R2  # any case, blanks
    assert goes_to(bench, sip(b"Call-ID: third\n")) == R1                                # LF alone ends a line
    # One template per call; connection entries keyed by the Call-ID (odd pad), none under the bare tuple.
    assert len(list(dp.m["persist"].keys())) == 3
    keys = list(dp.m["conns"].keys())
    assert len(keys) == 3 and all(k.pad & 1 for k in keys)
    assert bench.verdicts() == {"fwd_tx": 5}


def test_template_keeps_the_client_unless_the_netmask_drops_it(bench):
    bench.reset(cfg())
    line = b"Call-ID: shared-call@example.com\r\n"
    assert goes_to(bench, sip(line)) == R1
    assert goes_to(bench, sip(line, src="203.0.113.8")) == R2    # another client: its own template (IPVS matches it)
    bench.reset(cfg(netmask="0.0.0.0"))
    assert goes_to(bench, sip(line)) == R1
    assert goes_to(bench, sip(line, src="203.0.113.8")) == R1    # netmask 0: the Call-ID alone decides


@pytest.mark.parametrize("line", [
    b"",                                            # no Call-ID header
    b"X-Call-ID: inside-another-header\r\n",        # not at a line's start
    b"Call-ID: \r\n",                               # empty value
    b"Call-ID: " + b"x" * 256 + b"\r\n",            # longer than IPVS's 255
])
def test_datagrams_without_a_usable_call_id_are_dropped(bench, line):
    bench.reset(cfg())
    assert goes_to(bench, sip(line)) == "XDP_DROP"
    assert bench.verdicts() == {"drop_sip_no_callid": 1}
    assert bench.dp.verdict_rows()[S.REASON["drop_sip_no_callid"]][0] == 1   # what metrics and stats read


def test_a_call_id_cut_off_by_the_datagram_is_dropped(bench):
    bench.reset(cfg())
    pkt = udp4(sport=5060, dport=5060, payload=b"INVITE sip:b SIP/2.0\r\nCall-ID: no-line-end")
    assert goes_to(bench, pkt) == "XDP_DROP"
    assert bench.verdicts() == {"drop_sip_no_callid": 1}


def test_config_ipvsadm_and_keepalived(tmp_path):
    svc = xread.parse(cfg(), "<t>").services[0]
    assert svc.persistence_engine == "sip"
    with pytest.raises(ConfigError) as e:
        xread.parse(cfg().replace('proto = "udp"', 'proto = "tcp"'), "<t>")
    assert e.value.where == "service[0].persistence_engine" and "UDP" in e.value.message
    with pytest.raises(ConfigError) as e:
        xread.parse(cfg().replace("persistence_timeout = 300\n", ""), "<t>")
    assert e.value.where == "service[0].persistence_engine"
    (op,) = ipvsadm.parse("-A -u 198.51.100.10:5060 -s rr -p 300 --pe sip".split()).ops
    conf = admin.apply_ops(xread.parse("", "<t>"), [op])
    assert conf.services[0].persistence_engine == "sip"
    snap = {"fwmark": None, "family": 4, "vip": "198.51.100.10", "port": 5060, "proto": "udp", "scheduler": "rr",
            "persistence": 300, "netmask": "255.255.255.255", "pe": "sip", "reals": []}
    assert ipvslist.render_save({"services": [snap]}).splitlines()[0] == \
        "-A -u 198.51.100.10:5060 -s rr -p 300 --pe sip"
    p = write(tmp_path, vs("protocol UDP\nlb_algo rr\nlb_kind DR\npersistence_timeout 300\npersistence_engine sip\n"
                           "real_server 198.18.0.11 5060 { }\n", head="virtual_server 198.51.100.10 5060"))
    assert translate.load(p).config.services[0].persistence_engine == "sip"
    p = write(tmp_path, vs("protocol TCP\nlb_algo rr\nlb_kind DR\npersistence_timeout 300\npersistence_engine sip\n"
                           "real_server 198.18.0.11 5060 { }\n", head="virtual_server 198.51.100.10 5060"))
    imp = translate.load(p)
    assert imp.config.services[0].persistence_engine is None and not imp.reported
    assert any("persistence_engine sip has no effect on a TCP service" in w for w in imp.warnings)


def test_a_call_template_expires_persistence_timeout_after_its_last_datagram(bench):
    dp = bench.reset(cfg())
    assert goes_to(bench, sip(b"Call-ID: one\r\n")) == R1
    t0 = now_ns()
    assert dp.sweep(now=t0 + 290 * NS).templates_expired == 0
    assert dp.sweep(now=t0 + 310 * NS).templates_expired == 1
