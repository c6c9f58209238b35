"""The services under fuzz (tests/fuzz.py): one table from which the config, the generator's destinations and the
checker's expectations all come. Each service: its key ((family, proto, vip, port) or ("mark", n)), its reals as
(address, NAT port or None), scheduler, method and extra TOML; reals listed in DOWN are applied health-failed
(Real.failed, as the daemon's health wiring writes them) and must never get a packet."""
import dataclasses
import ipaddress

from harness import GW_MAC, LB1_MAC, LB_MAC, REAL_MAC

SRC4 = 'tunnel_source = ["198.18.0.2", "2001:db8::2"]\n'

# key, reals [(address, NAT port)], scheduler, method, extra keys
SPECS = [
    ((4, 6, "198.51.100.10", 80), [("198.18.0.11", None), ("198.18.0.12", None)], "rr", "dr", ""),
    ((4, 17, "198.51.100.10", 53), [("198.18.0.12", None), ("198.18.0.13", None)], "mh", "dr", ""),
    ((4, 6, "198.51.100.20", 0), [("198.18.0.13", None)], "wlc", "dr",
     "persistence_timeout = 60\npersistence_netmask = \"255.255.255.0\"\n"),
    ((4, 6, "198.51.100.40", 80), [("198.18.1.11", None)], "lc", "dr", ""),
    ((6, 6, "2001:db8:100::10", 80), [("2001:db8::11", None), ("2001:db8::12", None)], "sh", "dr", ""),
    ((6, 17, "2001:db8:100::10", 53), [("2001:db8::13", None)], "wrr", "dr", ""),
    ((6, 17, "2001:db8:100::20", 0), [("2001:db8::11", None)], "sed", "dr", "persistence_timeout = 30\n"),
    (("mark", 1), [("198.18.0.11", None), ("198.18.0.13", None)], "sh", "dr", "persistence_timeout = 120\n"),
    # NAT: port mapping on some reals, a real on lb1 (redirect), IPv6
    ((4, 6, "198.51.100.50", 80), [("198.18.0.11", 8080), ("198.18.0.12", None), ("198.18.1.11", 8081)], "rr",
     "nat", ""),
    ((4, 17, "198.51.100.50", 53), [("198.18.0.13", 5353)], "wrr", "nat", ""),
    ((6, 6, "2001:db8:100::50", 80), [("2001:db8::12", 8080), ("2001:db8:1::11", None)], "lc", "nat", ""),
    ((6, 17, "2001:db8:100::50", 53), [("2001:db8::13", None)], "rr", "nat", ""),
    # TUN: IPIP (IPv4 in IPv4, IPv4 in IPv6, IPv6 in IPv4), GRE with checksums, GUE with IPVS's header and Katran's none
    ((4, 6, "198.51.100.60", 80), [("198.18.0.11", None), ("198.18.0.12", None)], "rr", "tun", SRC4),
    ((4, 6, "198.51.100.61", 80), [("2001:db8::11", None)], "rr", "tun", SRC4),
    ((4, 17, "198.51.100.60", 53), [("198.18.0.13", None)], "rr", "tun", SRC4 + 'tunnel_type = "gre"\n'
     'tunnel_csum = "csum"\n'),
    ((6, 6, "2001:db8:100::60", 80), [("2001:db8::12", None)], "mh", "tun", 'tunnel_type = "gue"\n'
     'tunnel_port = 5555\n'),
    ((6, 6, "2001:db8:100::61", 80), [("198.18.0.12", None)], "rr", "tun", SRC4),
    ((6, 17, "2001:db8:100::60", 53), [("2001:db8::13", None)], "rr", "tun", 'tunnel_type = "gue"\n'
     'tunnel_gue_header = false\n'),
    # SCTP by DR and by TUN
    ((4, 132, "198.51.100.70", 3868), [("198.18.0.11", None), ("198.18.0.12", None)], "rr", "dr", ""),
    ((6, 132, "2001:db8:100::70", 3868), [("2001:db8::12", None), ("2001:db8::13", None)], "wlc", "tun",
     'tunnel_source = "2001:db8::2"\n'),
    # SIP Call-ID persistence; one-packet scheduling
    ((4, 17, "198.51.100.80", 5060), [("198.18.0.11", None), ("198.18.0.12", None)], "rr", "dr",
     "persistence_timeout = 300\npersistence_engine = \"sip\"\n"),
    ((4, 17, "198.51.100.80", 53), [("198.18.0.12", None), ("198.18.0.13", None)], "rr", "dr", "ops = true\n"),
    # locality schedulers; a service with a health-failed real
    ((4, 6, "198.51.100.90", 80), [("198.18.0.11", None), ("198.18.0.13", None)], "lblc", "dr", ""),
    ((6, 6, "2001:db8:100::90", 80), [("2001:db8::11", None), ("2001:db8::12", None)], "lblcr", "dr", ""),
    ((4, 17, "198.51.100.90", 53), [("198.18.0.11", None), ("198.18.0.12", None), ("198.18.0.13", None)], "wrr",
     "dr", ""),
    ((6, 6, "2001:db8:100::91", 80), [("2001:db8::11", None), ("2001:db8::13", None)], "rr", "nat", ""),
]
DOWN = {(4, 17, "198.51.100.90", 53): "198.18.0.12", (6, 6, "2001:db8:100::91", 80): "2001:db8::11"}

# key -> the reals a packet of it may go to (DOWN ones left out); key -> method; (key, real) -> NAT port
SERVICES = {key: [a for a, _p in reals if DOWN.get(key) != a] for key, reals, _s, _m, _x in SPECS}
METHOD = {key: method for key, _r, _s, method, _x in SPECS}
NAT_PORT = {(key, a): p for key, reals, _s, _m, _x in SPECS for a, p in reals if p}
# services whose packets are not followed by their tuple: one-packet scheduling, SIP (conns keyed by Call-ID)
NO_FOLLOW = {key for key, _r, _s, _m, extra in SPECS if "ops" in extra or "sip" in extra}
# mark rules: (mark, family, network, proto or None for any, ports or None for every port)
MARKS = [(1, 4, ipaddress.ip_network("198.51.100.30/32"), 6, {443, 8443})]
PROTO_NAME = {6: "tcp", 17: "udp", 132: "sctp"}


def _toml(key, reals, sched, method, extra):
    if key[0] == "mark":
        head = f'fwmark = {key[1]}\nfamily = "ipv4"\n'
    else:
        head = f'vip = "{key[2]}"\nport = {key[3]}\nproto = "{PROTO_NAME[key[1]]}"\n'
    out = f'[[service]]\n{head}scheduler = "{sched}"\nmethod = "{method}"\n{extra}'
    for addr, port in reals:
        out += f'  [[service.real]]\n  address = "{addr}"\n  weight = 1\n' + (f"  port = {port}\n" if port else "")
    return out


CONFIG = "\n".join([_toml(*spec) for spec in SPECS]
                   + ['[[mark]]\nmark = 1\ndst = "198.51.100.30/32"\nproto = "tcp"\nports = [443, 8443]\n'])


def apply(bench):
    """Reset the bench's maps to CONFIG, then write it again with DOWN's reals failed (weight 0, Real.failed), as
    the daemon's health wiring does, and turn state-sync export on (its ring buffer: drain_sync)."""
    bench.reset(CONFIG)
    c = bench.config(CONFIG)
    svcs = []
    for s in c.services:
        down = DOWN.get((s.family, s.proto and {v: k for k, v in PROTO_NAME.items()}[s.proto], str(s.vip), s.port))
        svcs.append(dataclasses.replace(s, reals=tuple(
            dataclasses.replace(r, failed="removed", weight=0) if str(r.address) == down else r for r in s.reals)))
    bench.dp.apply(dataclasses.replace(c, services=tuple(svcs)))
    bench.dp.set_sync_export(True)
    bench.sync_records = 0

    def counted(_event):
        bench.sync_records += 1
    bench.sync_events(counted)


def drain_sync(bench):
    """Read the sync records the batch exported (so the ring never fills); returns how many so far."""
    bench.poll_sync()
    return bench.sync_records


# Destination addresses that belong to a service (a VIP or a mark prefix), and others.
OURS = {ipaddress.ip_address(k[2]).packed for k in SERVICES if k[0] != "mark"} | {
    n.network_address.packed for _m, _f, n, _p, _ports in MARKS}
VIPS4 = sorted({k[2] for k in SERVICES if k[0] == 4})
VIPS6 = sorted({k[2] for k in SERVICES if k[0] == 6})
DST4 = VIPS4 + ["198.51.100.10", "198.51.100.30", "198.51.100.30", "198.51.100.99", "192.0.2.1", "203.0.113.250",
                "198.18.0.2"]
DST6 = VIPS6 + ["2001:db8:100::10", "2001:db8:100::99", "2001:db8:200::1", "2001:db8::2"]
PORTS = [80, 80, 80, 53, 53, 443, 443, 8443, 22, 0, 65535, 3868, 5060]
MAC = {s: bytes.fromhex(s.replace(":", "")) for s in [LB_MAC, LB1_MAC, GW_MAC, *REAL_MAC.values()]}
LB = MAC[LB_MAC]
LBS = (MAC[LB_MAC], MAC[LB1_MAC])
GW = MAC[GW_MAC]
# hosts on lb1's link (their frames come in on lb1)
LB1_HOSTS = {MAC[REAL_MAC[a]] for a in REAL_MAC if a.startswith(("198.18.1.", "2001:db8:1:"))}
