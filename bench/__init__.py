"""xlb's benchmark harness: `python -m bench [--quick] [--json PATH] [--plots DIR]` (see docs/performance.md).

Four parts, each a module: micro (per-packet cost through BPF_PROG_TEST_RUN), forward (forwarding rate through
veth pairs, against the XDP floor, nftables DNAT and kernel forwarding), control (control-plane scale) and flood (the
SYN-flood defense's costs and effect, docs/reliability.md). No
test asserts a timing; tests/test_bench.py checks only that a quick run produces the result shape.
`python -m bench.health` measures the health engine on its own, `python -m bench.decap` `xlb decap`'s per-packet cost,
`python -m bench.scaleout` the ECMP lab (docs/scale-out.md).
"""
import os
import signal
import sys


def unwind_on_sigterm():
    """SIGTERM unwinds like an exception, so namespaces and XDP attachments are removed. Forked helpers
    (pyroute2's, xlb.lab.netns's) inherit the handler and must still die the ordinary way."""
    main_pid = os.getpid()

    def on_term(signum, _frame):
        if os.getpid() != main_pid:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        sys.exit(143)

    signal.signal(signal.SIGTERM, on_term)
