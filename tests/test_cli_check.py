"""`xlb check FILE`: what it accepts, `xlb run` must be able to load; no root, no bcc.

The map capacities (bpf/consts.h: services, reals, mark-rule trie entries, scheduling slots) are fixed when the
program is compiled, and `xlb run` refuses a config that does not fit them (DataPlane.check). `xlb check` knows
the same sizes, so it refuses the same configs, naming the same field.
"""
import subprocess
from pathlib import Path

import pytest

from xlb.dataplane import structs as S

XLB = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "xlb"


def _marks_beyond_the_trie():
    """Mark rules for every port from 1024, tcp and udp, on enough prefixes to pass XLB_MARK_ENTRIES."""
    per_rule = 2 * (65535 - 1024 + 1)
    n = S.DEFINES["XLB_MARK_ENTRIES"] // per_rule + 1
    text = "".join(f'[[mark]]\nmark = 1\ndst = "198.51.100.{i}/32"\nports = ["1024-65535"]\n' for i in range(n))
    return text, "mark", f"mark rules expand to {n * per_rule} (family, proto, port, prefix) entries; at most " \
                         f"{S.DEFINES['XLB_MARK_ENTRIES']}: name fewer ports"


def _services_beyond_the_map():
    n = S.DEFINES["XLB_MAX_SERVICES"]
    text = "".join(f'[[service]]\nvip = "198.51.{100 + i // 250}.{i % 250 + 1}"\nport = 80\nproto = "tcp"\n'
                   for i in range(n))
    return text, "service", f"{n} services; at most {n - 1}"


def _tables_beyond_the_slots():
    size = 1000003  # the largest mh table; three need more than half the slots (old and new coexist on a reload)
    n = S.DEFINES["XLB_SCHED_SLOTS"] // 2 // size + 1
    text = "".join(f'[[service]]\nvip = "198.51.100.{i + 1}"\nport = 80\nproto = "tcp"\nscheduler = "mh"\n'
                   f'mh_table_size = {size}\n[[service.real]]\naddress = "198.18.0.11"\n' for i in range(n))
    return text, "service", f"scheduling tables need {n * size} slots; at most {S.DEFINES['XLB_SCHED_SLOTS'] // 2}"


@pytest.mark.parametrize("case", [_marks_beyond_the_trie, _services_beyond_the_map, _tables_beyond_the_slots],
                         ids=["mark-trie-entries", "services", "scheduling-slots"])
def test_check_refuses_what_run_cannot_load(tmp_path, case):
    text, where, message = case()
    path = tmp_path / "big.toml"
    path.write_text(text)
    r = subprocess.run([str(XLB), "check", str(path)], capture_output=True, text=True, timeout=120)
    assert (r.returncode, r.stdout) == (1, ""), r.stdout
    assert r.stderr == f"xlb: error: {path}: {where}: {message}\n"


def test_check_of_a_file_nested_10000_deep_is_one_line(tmp_path):
    path = tmp_path / "deep.toml"
    path.write_text("a = " + "[" * 10000 + "]" * 10000 + "\n")
    r = subprocess.run([str(XLB), "check", str(path)], capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr == (f"xlb: error: {path}: TOML nested too deeply (arrays or inline tables inside each other "
                        "hundreds of levels deep) to be a config\n")


def test_check_names_the_line_of_a_bad_field(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[[service]]\nvip = "198.51.100.10"\nport = 80\nproto = "tcp"\n'
                    '[[service.real]]\naddress = "198.18.0.11"\nweight = -1\n')
    r = subprocess.run([str(XLB), "check", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert r.stderr == (f"xlb: error: {path}: line 7: service[0].real[0].weight: weight must be an integer "
                        "0..65535, got -1\n")
