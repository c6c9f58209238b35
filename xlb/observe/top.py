"""`xlb top`: live rates per service and real (new connections/s, packets/s, bytes/s, active connections).

It asks the daemon for its `stats` snapshot (xlb/observe/stats.py) every interval and shows the difference. ``render`` is a
pure function of two snapshots and the time between them; ``run`` is the loop: interactive (the alternate screen,
redrawn like top, quit with q or Ctrl-C) or, with ``iterations``, that many frames printed one after another for
scripts and tests.
"""
import os
import select
import sys
import time

CLEAR = "\x1b[H\x1b[2J"
ALT_ON, ALT_OFF = "\x1b[?1049h\x1b[?25l", "\x1b[?25h\x1b[?1049l"


def human(value, unit=""):
    """1234 -> '1.2K', 0.5 -> '0.5': short, for columns."""
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= div:
            return f"{value / div:.1f}{suffix}{unit}"
    return f"{value:.1f}{unit}" if value % 1 else f"{int(value)}{unit}"


def _rate(cur, prev, key, interval):
    delta = cur.get(key, 0) - (prev or {}).get(key, 0)
    return max(delta, 0) / interval  # a counter that went back (its id was reused) counts from zero


HEADER = f"{'SERVICE / REAL':<40}{'CPS':>9}{'PKT/S':>10}{'BYTES/S':>11}{'ACTIVE':>9}{'INACT':>8}"


def render(prev, cur, interval, width=None):
    """The screen for two `stats` snapshots taken `interval` seconds apart: a list of lines."""
    interval = max(interval, 1e-9)
    before = {s["service"]: s for s in prev.get("services", [])}
    lines = []
    rows = []
    tot = {"cps": 0.0, "pps": 0.0, "bps": 0.0, "active": 0}
    for s in cur.get("services", []):
        ps = before.get(s["service"])
        prev_reals = {r["address"]: r for r in (ps or {}).get("reals", [])}
        cps, pps, bps = (_rate(s, ps, k, interval) for k in ("conns", "packets", "bytes"))
        active = sum(r.get("active", 0) for r in s["reals"])
        inactive = sum(r.get("inactive", 0) for r in s["reals"])
        tot["cps"] += cps
        tot["pps"] += pps
        tot["bps"] += bps
        tot["active"] += active
        rows.append(_row(f"{s['service']} {s['scheduler']}", cps, pps, bps, active, inactive))
        for r in s["reals"]:
            pr = prev_reals.get(r["address"])
            rows.append(_row(f"  -> {r['address']} w{r['weight']}",
                             *(_rate(r, pr, k, interval) for k in ("conns", "packets", "bytes")),
                             r.get("active", 0), r.get("inactive", 0)))
    drops = sum(_rate(v, prev.get("verdicts", {}).get(k), "packets", interval)
                for k, v in cur.get("verdicts", {}).items() if k.startswith("drop_"))
    nreals = sum(len(s["reals"]) for s in cur.get("services", []))
    lines.append(f"xlb top - every {interval:.1f}s - {len(cur.get('services', []))} services, {nreals} reals - "
                 f"{human(tot['cps'])} conn/s, {human(tot['pps'])} pkt/s, {human(tot['bps'], 'B')}/s, "
                 f"{human(tot['active'])} active, {human(drops)} drops/s")
    lines.append("")
    lines.append(HEADER)
    lines.extend(rows)
    if width:
        lines = [ln[:width] for ln in lines]
    return lines


def _row(label, cps, pps, bps, active, inactive):
    if len(label) > 39:
        label = label[:38] + "~"
    return (f"{label:<40}{human(cps):>9}{human(pps):>10}{human(bps, 'B'):>11}{human(active):>9}"
            f"{human(inactive):>8}")


def run(fetch, interval=1.0, iterations=None, out=None, inp=None):
    """Show frames until q / Ctrl-C, or `iterations` frames (each after `interval` seconds) without a terminal.
    out and inp default to sys.stdout and sys.stdin as they are at the call."""
    out = out or sys.stdout
    inp = inp or sys.stdin
    interactive = iterations is None
    if interactive and not (inp.isatty() and out.isatty()):
        raise SystemExit("xlb top: not a terminal; use --once or --iterations N")
    prev, t_prev = fetch(), time.monotonic()
    if not interactive:
        for i in range(iterations):
            time.sleep(interval)
            cur, t = fetch(), time.monotonic()
            if i:
                out.write("\n")
            out.write("\n".join(render(prev, cur, t - t_prev)) + "\n")
            out.flush()
            prev, t_prev = cur, t
        return 0
    import termios
    import tty
    fd = inp.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        out.write(ALT_ON + CLEAR + f"xlb top: measuring for {interval:g}s (q quits)")
        out.flush()
        while True:
            if _wait_key(fd, interval) in ("q", "Q"):
                return 0
            cur, t = fetch(), time.monotonic()
            size = os.get_terminal_size(out.fileno())
            out.write(CLEAR + "\n".join(render(prev, cur, t - t_prev, width=size.columns)[:size.lines - 1]))
            out.flush()
            prev, t_prev = cur, t
    except KeyboardInterrupt:
        return 0
    finally:
        out.write(ALT_OFF)
        out.flush()
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _wait_key(fd, timeout):
    """A key pressed within timeout seconds, or None."""
    ready, _, _ = select.select([fd], [], [], timeout)
    if not ready:
        return None
    return os.read(fd, 32).decode(errors="replace")[-1:]
