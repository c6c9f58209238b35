"""The NAT reply cache (bpf/replycache.h): a real's replies skip nat_revs within the flow cache's TTL, and never do
anything nat_revs would not have done then. Each test shows the cache in use by what only the cache explains (a reply
rewritten although its nat_revs entry is gone, as the sweep leaves it), then the ways out: a control-plane change
(settings.gen), the TTL from the next hop's lookup, a state change (SYN, FIN, RST) from the real. Exact frames as in
tests/test_nat_packets.py."""
import ctypes as ct

import pytest

from harness import LB1_MAC, REAL_MAC, conn_key, tcp4, udp4
from xlb.dataplane import structs as S
from xlb.dataplane.mapkeys import htons
from xlb.config.model import addr_bytes

from cases import PASS, REDIRECT, V4
from natframes import R4, nat_in, nat_out, reply, run, svc

BPF_F_MMAPABLE = 1 << 10  # include/uapi/linux/bpf.h
V4B = "198.51.100.20"
CFG = "\n".join([svc(V4, 80, "tcp", [(R4, 8080)]), svc(V4B, 80, "tcp", [(R4, 8080)]),
                 svc(V4, 53, "udp", [(R4, 5353)])])


def cached(bench, rep):
    """{index: entry} of the live reply-cache entries for reply rep's tuple (at most one)."""
    key = bytes(conn_key(rep))
    gen = bench.dp.m["settings"][ct.c_uint32(0)].gen
    found = {k: v for k, v in bench.prog["reply_cache"].items_lookup_batch()
             if bytes(v.key) == key and v.gen == gen}
    assert len(found) <= 1, found
    return found


def sweep_nat_rev(bench, rep):
    """Delete the reply's nat_revs entry, as the sweep does once its connection entry is gone."""
    del bench.prog["nat_revs"][conn_key(rep)]


def go(bench, *steps):
    """natframes.run over these steps, the verdict counters from zero."""
    table = bench.prog["verdicts"]
    zero = table.Leaf()
    for i in range(table.max_entries):
        table[ct.c_uint32(i)] = zero
    run(bench, list(steps))


def established(bench, client=tcp4, vip=V4, vport=80, rport=8080, **kw):
    """A NAT connection through its handshake (TCP) or first datagram (UDP), and the real's first plain reply
    (which fills the cache). Returns (steps run, the client's packet, that reply)."""
    if client is tcp4:
        syn, ack = tcp4(dst=vip, flags="S", **kw), tcp4(dst=vip, flags="A", **kw)
        synack = reply(syn, R4, rport)
        rep = reply(syn, R4, rport, flags="A", payload=b"data")
        steps = [(syn, None, REDIRECT, nat_in(syn, R4, rport, LB1_MAC, REAL_MAC[R4]), "fwd_redirect"),
                 (synack, bench.ifindex1, REDIRECT, nat_out(synack, vip, vport), "fwd_reply_redirect"),
                 (ack, None, REDIRECT, nat_in(ack, R4, rport, LB1_MAC, REAL_MAC[R4]), "fwd_redirect")]
    else:
        ack = client(dst=vip, dport=vport, **kw)
        rep = reply(ack, R4, rport, payload=b"answer")
        steps = [(ack, None, REDIRECT, nat_in(ack, R4, rport, LB1_MAC, REAL_MAC[R4]), "fwd_redirect")]
    steps.append((rep, bench.ifindex1, REDIRECT, nat_out(rep, vip, vport), "fwd_reply_redirect"))
    return steps, ack, rep


@pytest.mark.parametrize("client,vport,rport", [(tcp4, 80, 8080), (udp4, 53, 5353)], ids=["tcp", "udp"])
def test_a_plain_reply_fills_the_cache_and_hits_need_no_nat_revs(bench, client, vport, rport):
    bench.reset(CFG)
    steps, _, rep = established(bench, client, vport=vport, rport=rport)
    go(bench, *steps[:-1])
    assert not cached(bench, rep)                                    # a SYN-ACK never fills it
    go(bench, steps[-1])
    (e,) = cached(bench, rep).values()
    rev = bench.prog["nat_revs"][conn_key(rep)]
    assert bytes(e.vip) == addr_bytes(V4) and e.vport == htons(vport)
    assert (e.real_id, e.svc_id, e.ifindex, e.mtu) == (rev.real_id, rev.svc_id, rev.ifindex, rev.mtu)
    assert (bytes(e.dmac), bytes(e.smac), e.stamp) == (bytes(rev.dmac), bytes(rev.smac), rev.hop_stamp)
    sweep_nat_rev(bench, rep)
    go(bench, steps[-1], steps[-1])                                  # served from the cache, byte for byte
    assert bench.dp.counters("real_out_stats", e.real_id).packets == (4 if client is tcp4 else 3)  # every reply
    # A control-plane change voids it: the next reply finds no connection and passes untouched.
    bench.dp.invalidate_flow_cache()
    assert not cached(bench, rep)
    go(bench, (rep, bench.ifindex1, PASS, None, "pass_no_service"))


def test_an_entry_lives_one_ttl_from_its_next_hop_lookup(bench):
    bench.reset(CFG)
    steps, _, rep = established(bench)
    go(bench, *steps)
    sweep_nat_rev(bench, rep)
    ((idx, e),) = cached(bench, rep).items()
    ttl = bench.dp.m["settings"][ct.c_uint32(0)].flow_ttl
    e.stamp = (e.stamp - ttl) & 0xFFFFFFFF                           # its hop looked up one TTL ago
    bench.prog["reply_cache"][ct.c_uint32(idx)] = e
    go(bench, (rep, bench.ifindex1, PASS, None, "pass_no_service"))


@pytest.mark.parametrize("flags", ["FA", "R", "SA"])
def test_a_state_change_from_the_real_takes_the_full_path_and_empties_the_entry(bench, flags):
    bench.reset(CFG)
    steps, syn, rep = established(bench)
    go(bench, *steps)
    assert cached(bench, rep)
    change = reply(syn, R4, 8080, flags=flags, payload=b"")
    go(bench, (change, bench.ifindex1, REDIRECT, nat_out(change, V4, 80), "fwd_reply_redirect"))
    assert not cached(bench, rep)
    sweep_nat_rev(bench, rep)
    go(bench, (rep, bench.ifindex1, PASS, None, "pass_no_service"))


def test_a_reused_tuple_to_another_vip_replies_from_its_own(bench):
    """The client port that reached VIP A on a real:port reaches VIP B on the same real:port: B's connection
    (recorded last) owns the reply tuple in nat_revs. Its SYN-ACK takes the full path and empties A's cached
    entry, so its data replies come from VIP B at once, not from A's entry within its TTL."""
    bench.reset(CFG)
    a_steps, _, rep = established(bench, vip=V4)
    go(bench, *a_steps)
    assert cached(bench, rep)
    b_steps, _, b_rep = established(bench, vip=V4B)
    assert bytes(b_rep) == bytes(rep)                                # the same reply tuple
    go(bench, *b_steps)
    assert bytes(cached(bench, rep).popitem()[1].vip) == addr_bytes(V4B)


def test_entries_are_two_cache_lines(bench):
    """128-byte entries in page-aligned values (BPF_F_MMAPABLE): a probe compares the key in the first line."""
    from xlb.dataplane.libbpf import map_info
    table = bench.prog["reply_cache"]
    assert ct.sizeof(table.Leaf) == ct.sizeof(S.ReplyEntry) == 128
    assert S.ReplyEntry.gen.offset + 4 <= 64 and S.ReplyEntry.stamp.offset + 4 <= 64
    assert map_info(table.map_fd).map_flags & BPF_F_MMAPABLE


def test_a_balancer_with_no_nat_connection_looks_for_no_reply(bench):
    """Replies of a removed NAT service's connections are still rewritten while their reverse entries last (as
    IPVS rewrites them while its connections last); once the sweep has removed them, the next apply clears
    XLB_SET_F_NAT and a packet that is no service's passes at once: a DR-only balancer pays no reply-cache probe
    and no nat_revs lookups for it."""
    bench.reset(CFG)
    steps, _, rep = established(bench)
    go(bench, *steps)
    flags = lambda: bench.dp.m["settings"][ct.c_uint32(0)].flags & S.SET_F_NAT  # noqa: E731
    assert flags()
    dr_only = bench.config(svc(V4, 80, "tcp", [(R4, None)], method="dr"))
    bench.dp.apply(dr_only)
    assert flags()
    go(bench, steps[-1])                                             # rewritten to VIP:80 as before
    bench.prog["nat_revs"].clear()                                   # as the sweep does once the connections go
    bench.dp.apply(dr_only)
    assert not flags()
    bench.prog["nat_revs"][conn_key(rep)] = bench.prog["nat_revs"].Leaf()   # ignored: the flag says look no further
    go(bench, (rep, bench.ifindex1, PASS, None, "pass_no_service"))


def test_a_reused_tuples_half_open_syn_ack_is_its_own_and_empties_the_entry(bench):
    """With the SYN-flood defense on (the default), a new connection's reverse entry waits in nat_half while the
    earlier connection of a reused reply tuple (the same client port to another VIP on the same real:port) may
    still have one in nat_revs: the SYN-ACK is rewritten from the new VIP (nat_half first), and it empties the
    cache entry the earlier connection left, so no reply of the new connection is rewritten from the old VIP."""
    import dataclasses
    from harness import TEST_TABLES
    bench.reset(CFG)
    bench.dp.apply(dataclasses.replace(bench.config(CFG), tables=dataclasses.replace(TEST_TABLES, half_open=True)))
    a_steps, _, rep = established(bench, vip=V4)
    go(bench, *a_steps)
    assert bytes(cached(bench, rep).popitem()[1].vip) == addr_bytes(V4)
    b_steps, _, _ = established(bench, vip=V4B)
    go(bench, *b_steps[:2])                                          # B's SYN, then its SYN-ACK from nat_half
    assert not cached(bench, rep)
    go(bench, *b_steps[2:])                                          # the ACK promotes it: replies from B
    assert bytes(cached(bench, rep).popitem()[1].vip) == addr_bytes(V4B)
