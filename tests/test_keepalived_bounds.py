"""keepalived.conf reading: keepalived's verdicts on truncated files, and bounded time and memory for any input.

keepalived reports a file that ends inside blocks ("There are N missing '}'s or extra '{'s", keepalived -t exits
5) and skips an include that is not a regular non-executable file. It has no bound on ~SEQ or on parameters that
expand to themselves; xlb has (xlb/importers/keepalived/reader.py MAX_*), and says where one was reached.
"""
import os

import pytest

from xlb.importers.keepalived import reader as kaparse, translate as keepalived

from harness import DR, problems, vs, write

GOOD = vs(DR + "real_server 198.18.0.11 80 {\n    weight 1\n}\n")


def test_a_file_missing_its_final_brace_is_an_error(tmp_path):
    path = write(tmp_path, GOOD[:GOOD.rindex("}")])
    e = problems(path)
    assert [str(p) for p in e.problems] == [
        f"{path}: line 1: (block): There are 1 missing '}}'s or extra '{{'s (the virtual_server block opened here "
        "is not closed: a file cut short?)"]


def test_a_file_cut_after_a_real_server_brace_is_an_error(tmp_path):
    path = write(tmp_path, GOOD[:GOOD.index("{", GOOD.index("real_server")) + 1] + "\n")
    e = problems(path)
    assert "There are 2 missing '}'s or extra '{'s" in str(e)


def test_a_file_cut_inside_a_skipped_section_is_an_error_too(tmp_path):
    path = write(tmp_path, GOOD + "vrrp_instance VI_1 {\n    state MASTER\n")
    assert "line 9: (block): There are 1 missing '}'s" in str(problems(path))


def test_include_of_a_non_regular_file_is_skipped(tmp_path):
    """keepalived: "Configuration file '/dev/zero' is not a regular non-executable file - skipping"."""
    fifo = tmp_path / "fifo.conf"
    os.mkfifo(fifo)  # opening it would block
    script = tmp_path / "x.conf"
    script.write_text("garbage {\n")
    script.chmod(0o755)
    path = write(tmp_path, f"include /dev/zero\ninclude {fifo}\ninclude {script}\n" + GOOD)
    imp = keepalived.load(path)
    assert len(imp.config.services) == 1
    skipped = [w for w in imp.warnings if "not a regular non-executable file" in w]
    assert skipped == [f"{path}: line {n}: include: {f} is not a regular non-executable file - skipping (as "
                       "keepalived does)" for n, f in ((1, "/dev/zero"), (2, fifo), (3, script))]


def test_a_huge_seq_is_refused_at_once(tmp_path):
    path = write(tmp_path, GOOD + "~SEQ(i,1,1,100000000) real_server 198.18.0.1 80\n")
    e = problems(path)
    assert str(e.problems[0]) == (f"{path}: line 9: (file): ~SEQ of 100000000 values; xlb reads at most "
                                  f"{kaparse.MAX_LINES} lines")


def test_seqs_that_add_up_past_the_bound_stop_there(tmp_path):
    n = kaparse.MAX_LINES // 2 + 1
    path = write(tmp_path, f"~SEQ(i,1,1,{n}) a\n~SEQ(i,1,1,{n}) b\n")
    r = kaparse.Reader()
    r.read(path)
    assert len(r.lines) == kaparse.MAX_LINES
    assert [(p.line, p.message) for p in r.problems] == [
        (2, f"more than {kaparse.MAX_LINES} lines (after include, ~SEQ and parameters)")]


@pytest.mark.parametrize("text, line, message", [
    ("$A=$B $B\n$B=$C $C\n$C=$A $A\n\n$A\n", 5,
     f"parameter substitution makes a line longer than {kaparse.MAX_LINE_CHARS} characters"),
    ("$A=x $A\n$A\n", 2, "parameter expansion does not terminate"),
    ("$X= \\\n$X \\\n$X\n$X\n", 4, "parameter expansion does not terminate"),
    ("~SEQ(i,1,1,1000) ~SEQ(j,1,1,1000) ~SEQ(k,1,1,1000) $A\n", 1, f"more than {kaparse.MAX_LINES} lines"),
], ids=["doubling", "self-reference", "multi-line-self-reference", "nested-seq"])
def test_parameters_that_expand_without_end_are_refused(tmp_path, text, line, message):
    path = write(tmp_path, text)
    r = kaparse.Reader()
    r.read(path)
    assert len(r.problems) == 1
    assert (r.problems[0].file, r.problems[0].line) == (path, line)
    assert r.problems[0].message.startswith(message)


def test_a_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "bom.conf"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD.encode())
    assert len(keepalived.load(str(path)).config.services) == 1
