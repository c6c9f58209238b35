"""A reload that fails in any way (not only with a config error) is a rejected reload: the daemon keeps serving.

A TOML file nested 10,000 deep raises RecursionError inside tomllib; MemoryError or a bug in a reader must not end
the daemon either. The first test is end to end (a real `xlb run` in a lab of namespaces gets SIGHUP); the second
drives Daemon.reload directly, without root.
"""
import signal
from pathlib import Path

from conftest import needs_root

from xlb.daemon import Daemon
from xlb.demo import CLIENTS4, DEMO_CONFIG, VIP4, DrLab, xdp_prog_id

from test_integration import NAMES, log_path, log_has, wait_for  # noqa: F401  (log_path is a fixture)

DEEP = "a = " + "[" * 10000 + "]" * 10000 + "\n"


@needs_root
def test_sighup_with_a_file_nested_10000_deep_keeps_serving(log_path):  # noqa: F811
    from xlb import control
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
