"""Writing a bench run down: the JSON other tools read, PNG plots, and a short markdown summary."""
import json
import platform
import subprocess
from pathlib import Path

GOALS = ("established flow <= 1.5x the minimal forwarder; xlb >= 0.9x the floor and >= 3x nftables DNAT; "
         "Maglev 1000 reals < 100 ms; 1M-entry sweep < 1 s CPU")


def machine(quick):
    def first(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip()
        except OSError:
            return ""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os
    return {"kernel": platform.release(), "cpu": cpu, "cpus": os.cpu_count(), "python": platform.python_version(),
            "commit": first(["git", "-C", str(Path(__file__).parent), "rev-parse", "--short", "HEAD"]),
            "quick": quick}


def write_json(result, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, sort_keys=False) + "\n")


def _ratio(a, b):
    return a / b if a is not None and b else None


def _fmt(x, nd=2):
    return "n/a" if x is None else f"{x:.{nd}f}"


def summary(result):
    """The markdown summary: headline figures against the goals, then every figure."""
    micro, fwd, ctl = result.get("micro", {}), result.get("forward", {}), result.get("control", {})
    lines = ["# xlb bench summary", ""]
    m = result.get("machine", {})
    lines.append(f"Kernel {m.get('kernel')}, {m.get('cpu')} ({m.get('cpus')} CPUs), commit {m.get('commit')}"
                 f"{', --quick' if m.get('quick') else ''}.")
    lines += ["", "## Goals", ""]
    est = micro.get("established_tcp_v4", {})
    if est:
        mf = micro["min_fwd"]
        lines.append(f"- established TCP v4 (driven, distinct flows): {_fmt(est.get('ratio_to_min_fwd'))}x the "
                     f"minimal forwarder ({_fmt(est.get('ns_raw'), 1)} vs {_fmt(mf.get('ns_raw'), 1)} ns with the "
                     f"harness's cost; {_fmt(est.get('ns_per_pkt'), 1)} vs {_fmt(mf.get('ns_per_pkt'), 1)} ns "
                     f"without); same packet repeated: {_fmt(est.get('ratio_to_min_fwd_repeat'))}x; goal <= 1.5x")
        off = micro.get("established_tcp_v4_no_flow_cache", {})
        if off:
            lines.append(f"- the flow cache's share: the same case with the cache off costs {_fmt(off.get('ns_raw'), 1)} "
                         f"ns driven ({_fmt(off.get('ratio_to_min_fwd'))}x), {_fmt(off.get('ns_raw_repeat'), 1)} ns "
                         f"same packet ({_fmt(off.get('ratio_to_min_fwd_repeat'))}x)")
        for name, what in (("established_tcp_v4_tun_ipip", "IPIP"), ("established_tcp_v4_tun_gue_csum", "GUE+csum")):
            tun = micro.get(name, {})
            if tun and est.get("ns_raw"):
                lines.append(f"- TUN ({what}) established TCP v4 (driven): {_fmt(_ratio(tun.get('ns_raw'), est['ns_raw']))}x "
                             f"DR's ({_fmt(tun.get('ns_raw'), 1)} vs {_fmt(est.get('ns_raw'), 1)} ns with the "
                             f"harness's cost; {_fmt(tun.get('ns_per_pkt'), 1)} vs {_fmt(est.get('ns_per_pkt'), 1)} "
                             "ns without); goal <= 1.3x")
    hit = micro.get("new_conn_persist_hit_v4", {})
    if hit:
        lines.append(f"- new connection with persistence (template hit, driven): {_fmt(hit.get('ratio_to_min_fwd'))}x "
                     f"the minimal forwarder; goal <= 2.5x")
    if "skipped" in fwd:
        lines.append(f"- forwarding: not measured ({fwd['skipped']})")
    elif fwd.get("xlb"):
        x = fwd["xlb"]["mpps"]
        lines.append(f"- forwarding: xlb {x:.2f} Mpps = {_fmt(_ratio(x, fwd.get('floor', {}).get('mpps')))}x the "
                     f"floor (goal >= 0.9), {_fmt(_ratio(x, fwd.get('nft_dnat', {}).get('mpps')))}x nftables DNAT "
                     f"(goal >= 3)")
    if "maglev_1000_reals" in ctl:
        lines.append(f"- Maglev, 1000 reals: {ctl['maglev_1000_reals']['seconds'] * 1000:.0f} ms (goal < 100 ms)")
    for name, v in ctl.items():
        if name.startswith("apply_") and "_services_x10" in name and v.get("seconds") is not None:
            lines.append(f"- {name}: {v['seconds']:.2f} s ({_fmt(v.get('cpu_seconds'))} s CPU), unchanged again "
                         f"{_fmt(v.get('reapply_unchanged_seconds'))} s, one weight changed "
                         f"{_fmt(v.get('reload_one_weight_seconds'))} s (goal for 10k: < 1 s; load average "
                         f"{_fmt(v.get('loadavg', [None])[0])})")
        if name.startswith("sweep_"):
            lines.append(f"- {name}: {v['cpu_seconds']:.2f} s CPU, the next sweep {_fmt(v.get('next_cpu_seconds'))} s "
                         f"(goal for 1M: < 0.3 s); {_fmt(v.get('cpu_ratio_to_numpy'))}x and "
                         f"{_fmt(v.get('next_cpu_ratio_to_numpy'))}x the numpy path's "
                         f"{_fmt(v.get('numpy_cpu_seconds'))} and {_fmt(v.get('numpy_next_cpu_seconds'))} s")
        if name == "metrics_scrape_1000x10" and v.get("seconds") is not None:
            lines.append(f"- {name}: {v['seconds'] * 1000:.0f} ms ({v['cpu_seconds'] * 1000:.0f} ms CPU; goal < 50 ms)")
    lines += _katran(result.get("katran"))
    if micro:
        lines += ["", "## Per-packet cost", "",
                  "ns minus XDP_PASS's; ratio: raw figures (harness cost included) over the minimal forwarder's.", "",
                  "| case | driven, distinct flows | ratio | repeat=1 (cold) | ratio | same packet, repeat=N | ratio |",
                  "|---|---|---|---|---|---|---|"]
        for name, c in micro.items():
            lines.append(f"| {name} | {_fmt(c.get('ns_per_pkt'), 1)} | {_fmt(c.get('ratio_to_min_fwd'))} | "
                         f"{_fmt(c.get('ns_per_pkt_cold'), 1)} | {_fmt(c.get('ratio_to_min_fwd_cold'))} | "
                         f"{_fmt(c.get('ns_per_pkt_repeat'), 1)} | {_fmt(c.get('ratio_to_min_fwd_repeat'))} |")
    if fwd and "skipped" not in fwd:
        gen = result.get("notes", {}).get("forward", {}).get("generator")
        lines += ["", "## Forwarding (Mpps delivered; 64-byte frames, one CPU for everything)", ""]
        lines += [f"Generator: {gen}.", ""] if gen else []
        lines += ["| system | all | tcp4 | udp4 | tcp6 | udp6 | lost |", "|---|---|---|---|---|---|---|"]
        for name, s in fwd.items():
            mixes = s.get("mixes", {})
            lost = sum(v.get("lost", 0) for v in mixes.values())
            lines.append(f"| {name} | {s['mpps']:.3f} | " + " | ".join(
                _fmt(mixes.get(k, {}).get("mpps"), 3) for k in ("tcp4", "udp4", "tcp6", "udp6")) + f" | {lost} |")
    if ctl:
        lines += ["", "## Control plane", "", "| what | seconds | CPU seconds | note |", "|---|---|---|---|"]
        for name, v in ctl.items():
            note = v.get("skipped", "")
            if "next_cpu_seconds" in v:
                note = f"next sweep: {v['next_seconds']:.3f} s, {v['next_cpu_seconds']:.3f} s CPU"
            lines.append(f"| {name} | {_fmt(v.get('seconds'), 3)} | {_fmt(v.get('cpu_seconds'), 3)} | {note} |")
    mem = result.get("memory")
    if mem and "conn_bytes" in mem:
        lines.append(f"\nMemory: {mem['conn_bytes']:.0f} bytes per connection, {mem['template_bytes']:.0f} bytes "
                     f"per persistence template ({mem['how']}).")
    return "\n".join(lines) + "\n"


KATRAN_GOALS = {"established_16384_flows": 0.5, "new_conn_setup": 0.7, "new_conn_setup_persist_hit": 0.6}


def _katran(k):
    """The side-by-side table (bench/katran_peer.py): raw ns per packet (a set-up: per flow, SYN and ACK)."""
    if not k:
        return []
    if not k.get("present"):
        return ["", "## Side by side with Katran", "", f"Not run: {k.get('reason')}."]
    n = k["notes"]
    lines = ["", "## Side by side with Katran", "",
             f"Same process, same CPU, alternating every round ({n['rounds']} rounds); tables "
             f"{n['table_entries_per_cpu']} entries per CPU. Raw ns (harness included; XDP_PASS's in the last "
             "columns); ratio: median of the per-round xlb / Katran.", "",
             "| case | xlb driven | Katran driven | ratio | goal | xlb repeat=1 | Katran repeat=1 | ratio | "
             "XDP_PASS driven / repeat=1 |", "|---|---|---|---|---|---|---|---|---|"]
    for name, c in k["cases"].items():
        goal = KATRAN_GOALS.get(name)
        lines.append(f"| {name} | {_fmt(c['xlb_ns'], 0)} | {_fmt(c['katran_ns'], 0)} | "
                     f"{_fmt(c['ratio_to_katran'])} | {'<= ' + str(goal) if goal else ''} | "
                     f"{_fmt(c['xlb_ns_cold'], 0)} | {_fmt(c['katran_ns_cold'], 0)} | "
                     f"{_fmt(c['ratio_to_katran_cold'])} | {_fmt(c['pass_ns'], 0)} / {_fmt(c['pass_ns_cold'], 0)} |")
    lines += ["", f"Persistence: {n['persist_hit']}."]
    return lines


def plots(result, outdir):
    """bench-micro.png, bench-forward.png; returns the paths written."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    written = []
    micro = {k: v for k, v in result.get("micro", {}).items() if k != "xdp_pass"}
    if micro:
        names = list(micro)
        fig, ax = plt.subplots(figsize=(9, 4.5))
        y = range(len(names))
        ax.barh([i + 0.2 for i in y], [micro[n].get("ns_per_pkt") or 0 for n in names], 0.4,
                label="driven, distinct flows (warm)")
        ax.barh([i - 0.2 for i in y], [micro[n].get("ns_per_pkt_cold") or 0 for n in names], 0.4,
                label="repeat=1 (cold)", alpha=0.6)
        ax.set_yticks(list(y), names)
        ax.invert_yaxis()
        ax.set_xlabel("ns per packet (minus XDP_PASS)")
        ax.set_title("xlb per-packet cost (BPF_PROG_TEST_RUN)")
        ax.legend(loc="upper right")
        fig.tight_layout()
        path = outdir / "bench-micro.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    fwd = result.get("forward", {})
    if fwd and "skipped" not in fwd:
        mixes = ("tcp4", "udp4", "tcp6", "udp6")
        fig, ax = plt.subplots(figsize=(8, 4))
        width = 0.8 / len(fwd)
        for i, (name, s) in enumerate(fwd.items()):
            ax.bar([j + i * width for j in range(len(mixes))],
                   [s.get("mixes", {}).get(m, {}).get("mpps", 0) for m in mixes], width, label=name)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(mixes))], mixes)
        ax.set_ylabel("Mpps delivered")
        ax.set_title("Forwarding through veth, 64-byte frames, one CPU")
        ax.legend()
        fig.tight_layout()
        path = outdir / "bench-forward.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written
