"""Security (docs/reliability.md "Security"): the control socket answers root only, checked on the peer's
credentials (SO_PEERCRED) even when the file's modes would let another user connect; metrics listen on loopback
unless told otherwise. Checker and notify commands (no shell, a timeout, a configured user) are tested in
tests/test_health_commands.py.
"""
import os
import shutil
import socket
import tempfile

import pytest
from conftest import needs_root

from xlb.cli import build_parser
from xlb.lab.process import run_in_netns
from xlb.observe import metrics
from xlb.ops import control

NOBODY = 65534


def _call_as(uid, path):
    """control.call("status") from a child that dropped root: (ok, message)."""
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    try:
        return True, control.call("status", path=path, timeout=10)
    except control.ControlError as exc:
        return False, str(exc)


@needs_root
def test_control_socket_refuses_an_unprivileged_peer_even_through_open_modes():
    d = tempfile.mkdtemp(prefix="xlb-sec-")
    served = []
    server = control.Server(os.path.join(d, "run", "xlb.sock"), lambda cmd, args: served.append(cmd) or "ok",
                            {"status"}, log=lambda msg: None)
    try:
        server.start()
        # As installed: the directory 0700 and the socket 0600; another user cannot even reach the socket.
        assert (os.stat(server.path.parent).st_mode & 0o777, os.stat(server.path).st_mode & 0o777) == (0o700, 0o600)
        os.chmod(d, 0o755)
        ok, msg = run_in_netns(None, _call_as, NOBODY, str(server.path))
        assert not ok and "permission denied; the control socket is root-only" in msg
        # Modes opened by mistake (or a socket handed over): the peer's uid, from SO_PEERCRED, still refuses.
        os.chmod(server.path.parent, 0o755)
        os.chmod(server.path, 0o666)
        assert run_in_netns(None, _call_as, NOBODY, str(server.path)) == (False, "the control socket is root-only")
        assert served == []
        assert run_in_netns(None, _call_as, 0, str(server.path)) == (True, "ok")
        assert served == ["status"]
    finally:
        server.close()
        shutil.rmtree(d)


def _bound(listen):
    endpoint = metrics.serve(listen, None)
    try:
        return endpoint.server.socket.getsockname()[:2]
    finally:
        endpoint.close()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("how", ["bare port", "no value"])
def test_metrics_listen_on_loopback_unless_told_otherwise(how):
    port = _free_port()
    if how == "no value":
        args = build_parser().parse_args(["run", "-i", "eth0", "-c", "x.toml", "--metrics"])
        assert args.metrics.startswith("127.0.0.1:")
        listen = args.metrics.replace(f":{metrics.DEFAULT_PORT}", f":{port}")
    else:
        listen = str(port)
    assert _bound(listen) == ("127.0.0.1", port)
    # Told otherwise, it binds where it is told.
    assert _bound(f"0.0.0.0:{port}") == ("0.0.0.0", port)


NOTIFY_CONFIG = """
[[service]]
vip = "198.51.100.10"
port = 80
proto = "tcp"
script_user = "nobody"
delay_loop = 0.2

  [[service.real]]
  address = "198.18.0.11"
  notify_down = ["/bin/sh", "-c", "id -u > {out}"]

  [service.check]
  kind = "MISC_CHECK"
  misc_path = "/bin/false"
  retry = 0
"""


@needs_root
def test_notify_scripts_run_as_the_services_script_user():
    """`script_user` of a health-checked service (keepalived's global_defs script_user): its notify and quorum
    commands run as that user, as MISC_CHECK's `user` does for its script. The daemon's checks (xlb/ops/health.py)
    run the engine; the real's check fails, its notify_down says who it ran as."""
    import time
    from xlb.config.read import parse
    from xlb.ops.health import Checks
    from pathlib import Path
    where = tempfile.mkdtemp(prefix="xlb-sec-")  # under /tmp: nobody cannot reach pytest's tmp_path
    os.chmod(where, 0o777)
    out = Path(where) / "uid"
    cfg = parse(NOTIFY_CONFIG.format(out=out))
    assert cfg.services[0].health.script_user == ("nobody", None)
    lines = []
    checks = Checks(lambda: None, lines.append)
    try:
        checks.update(cfg)
        deadline = time.monotonic() + 30  # only stops a broken test from hanging
        while not (out.exists() and out.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.1)
        uid = out.read_text().strip() if out.exists() else None
    finally:
        checks.close()
        shutil.rmtree(where)
    assert uid == str(NOBODY), lines


def test_keepalived_global_script_user_reaches_its_checked_services(tmp_path):
    from harness import vs, write
    from xlb.importers.keepalived import translate as keepalived
    head = "lb_algo rr\nprotocol TCP\n"
    body = head + "real_server 198.18.0.11 80 {\n  TCP_CHECK {\n    connect_timeout 3\n  }\n}\n"
    path = write(tmp_path, "global_defs {\n  script_user nobody nogroup\n}\n" + vs(body) +
                 vs(head + "real_server 198.18.0.12 80 {\n}\n", head="virtual_server 198.51.100.11 80"))
    checked, plain = keepalived.load(path).config.services
    assert checked.health.script_user == ("nobody", "nogroup")
    assert plain.health is None  # no checks: no engine for the user to run in
