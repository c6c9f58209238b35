"""What must not stop `xlb run`: a reload that fails in any way, and keepalived's warnings.

A reload that fails in any way (not only with a config error) is a rejected reload: the daemon keeps serving. A
TOML file nested 10,000 deep raises RecursionError inside tomllib; MemoryError or a bug in a reader must not end
the daemon either. The end-to-end tests run a real `xlb run` in a lab of namespaces; the loader test drives
Daemon.reload directly, without root. A keepalived.conf that keepalived runs after warnings runs in xlb too.
"""
import signal
from pathlib import Path

from conftest import needs_root

from xlb.ops.daemon import Daemon
from xlb.lab.demo import CLIENTS4, DEMO_CONFIG, VIP4, xdp_prog_id
from harness import NAMES, DrLab, log_has, wait_for


DEEP = "a = " + "[" * 10000 + "]" * 10000 + "\n"


@needs_root
def test_sighup_with_a_file_nested_10000_deep_keeps_serving(log_path):  # noqa: F811
    from xlb.ops import control
    with DrLab(prefix="xrf1") as lab:
        lab.start_xlb(DEMO_CONFIG, log_path=log_path)
        prog = xdp_prog_id(lab.lb, "eth0")
        lab.rewrite_config(DEEP)
        lab.signal_xlb(signal.SIGHUP)
        wait_for(lambda: log_has(log_path, "reload rejected"), what="rejection logged")
        text = Path(log_path).read_text()
        assert (f"xlb: reload rejected, running config unchanged: {lab.config_path}: TOML nested too deeply"
                in text)
        assert "Traceback" not in text and "detached" not in text
        assert lab.daemon.is_alive()
        assert control.call("status", path=lab.socket_path)["summary"] == "1 services, 3 reals, 1 mark rules"
        assert xdp_prog_id(lab.lb, "eth0") == prog
        assert lab.ask(CLIENTS4[0], VIP4, 80) in NAMES
        # And the next good file is taken.
        lab.rewrite_config(DEMO_CONFIG)
        lab.signal_xlb(signal.SIGHUP)
        wait_for(lambda: log_has(log_path, "xlb: reloaded"), what="reload logged")


def test_any_exception_from_the_loader_is_a_rejected_reload():
    said = []
    for exc in (MemoryError(), RecursionError("maximum recursion depth exceeded"), ValueError("a bug\nline 2")):
        def load(exc=exc):
            raise exc
        d = Daemon("lo", "/etc/xlb/x.toml", log=said.append, load=load)
        assert d.reload() is False
        assert d.reloads == {"success": 0, "rejected": 1, "failed": 0}
    assert said == ["xlb: reload rejected, running config unchanged: /etc/xlb/x.toml: MemoryError",
                    "xlb: reload rejected, running config unchanged: /etc/xlb/x.toml: RecursionError: maximum "
                    "recursion depth exceeded",
                    "xlb: reload rejected, running config unchanged: /etc/xlb/x.toml: ValueError: a bug"]


@needs_root
def test_run_keepalived_textbook_fwmark_block_logs_keepalived_warnings_and_runs(log_path, tmp_path):  # noqa: F811
    """`protocol TCP` and a real's port in a fwmark virtual server: keepalived -t warns, keepalived runs it."""
    from xlb.lab.demo import REALS4
    from harness import run_xlb_logged
    reals = "".join(f"    real_server {r} 80 {{\n        TCP_CHECK {{\n            connect_timeout 3\n        }}\n"
                    "    }\n" for r in REALS4)
    conf = tmp_path / "keepalived.conf"
    conf.write_text("virtual_server fwmark 1 {\n    delay_loop 6\n    lb_algo rr\n    lb_kind DR\n"
                    f"    protocol TCP\n{reals}}}\n")
    marks = tmp_path / "marks.sh"
    marks.write_text(f"iptables -t mangle -A PREROUTING -p tcp -d {VIP4}/32 --dport 80 -j MARK --set-mark 1\n")
    with DrLab(prefix="xrf2") as lab:
        argv = ["run", "--iface", "eth0", "--keepalived", str(conf), "--marks", str(marks), "--xdp-mode", "generic",
                "--socket", str(tmp_path / "xlb.sock")]
        lab.daemon = lab.topo.spawn(lab.lb, run_xlb_logged, log_path, argv)
        wait_for(lambda: xdp_prog_id(lab.lb, "eth0") is not None or not lab.daemon.is_alive(), timeout=60,
                 what="attach")
        text = Path(log_path).read_text()
        assert lab.daemon.is_alive(), text
        assert (f"xlb: warning: {conf}: line 5: protocol: protocol specified for fwmark - protocol will be "
                "ignored") in text
        assert (f"xlb: warning: {conf}: line 6: real_server: fwmark virtual server, real server {REALS4[0]} has "
                "port 80 specified - clearing") in text
        assert lab.ask(CLIENTS4[0], VIP4, 80) in NAMES
