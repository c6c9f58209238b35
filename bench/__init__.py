"""xlb's benchmark harness: `python -m bench [--quick] [--json PATH] [--plots DIR]` (see docs/performance.md).

Three parts, each a module: micro (per-packet cost through BPF_PROG_TEST_RUN), forward (forwarding rate through
veth pairs, against the XDP floor, nftables DNAT and kernel forwarding) and control (control-plane scale). No
test asserts a timing; tests/test_bench.py checks only that a quick run produces the result shape.
"""
