"""xlb/ops/announce.py without root: a BIRD that accepts the connection and never answers (a stopped process)
holds only the announcer's own thread; the daemon's calls return, the failure is logged once and retried, and
closing gives up within the exchange's timeout. The real BIRD runs in tests/test_bgp_daemon.py."""
import socket
import threading
from ipaddress import ip_address

from xlb.ops.announce import Announcements
from xlb.sync.bgp import render


def test_a_bird_that_never_answers_holds_nothing_but_the_worker(tmp_path):
    path = str(tmp_path / "bird.ctl")
    hung = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    hung.bind(path)
    hung.listen(8)          # connections complete in the backlog; nothing ever reads or answers them
    logs = []
    ann = Announcements(str(tmp_path / "vips.conf"), path, logs.append, timeout=0.3)
    try:
        ann.start()
        assert (tmp_path / "vips.conf").read_text() == render(())
        ann.want({ip_address("198.51.100.10")})        # returns: the worker does the talking
        status = ann.drain(on=False, wait=0.1)            # waits at most what it is told, then says so
        assert status["wanted"] == ["198.51.100.10"] and not status["in_step"]
        done = threading.Event()
        for _ in range(100):
            if ann.error:
                break
            done.wait(0.05)
        assert "timed out" in ann.error
        assert sum("xlb: bgp:" in line for line in logs) == 1   # logged once, not once per retry
    finally:
        ann.close()
        hung.close()
    assert (tmp_path / "vips.conf").read_text() == render(())  # nothing BIRD did not accept stays in the file
    assert any("could not withdraw" in line for line in logs)
