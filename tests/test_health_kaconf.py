"""keepalived.conf checker blocks -> the health spec: keepalived's reading of each keyword, problems named by file
and line, and the shared corpus as the oracle (every checker problem xlb reports, keepalived -t reported at the
same line; every other checker block parses). Pure."""
import glob
import os
import re

import pytest

from xlb.health import kaconf
from xlb.importers.keepalived.reader import Reader
from xlb.importers.keepalived.tree import build_tree

CORPUS = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "keepalived-corpus")
CHECKERS = ("TCP_CHECK", "HTTP_GET", "SSL_GET", "MISC_CHECK", "SMTP_CHECK", "DNS_CHECK", "UDP_CHECK", "PING_CHECK",
            "FILE_CHECK", "BFD_CHECK")


def nodes_of(path):
    reader = Reader()
    reader.read(str(path))
    return build_tree(reader.lines)[0]


track_files = kaconf.track_files


def checker_blocks(nodes, real=None):
    """(checker block, its real_server node) pairs."""
    for n in nodes:
        if real is not None and n.keyword in CHECKERS:
            yield n, real
        elif n.children:
            yield from checker_blocks(n.children, n if n.keyword == "real_server" else real)


def parse_text(tmp_path, body, kind="TCP_CHECK", globals_=""):
    conf = tmp_path / "keepalived.conf"
    conf.write_text(f"{globals_}\nvirtual_server 198.51.100.10 80 {{\n real_server 198.18.1.2 80 {{\n"
                    f"  {kind} {{\n{body}\n  }}\n }}\n}}\n")
    nodes = nodes_of(conf)
    ((block, _),) = checker_blocks(nodes)
    return kaconf.parse(block, track_files(nodes))


def test_keepalived_spellings(tmp_path):
    check, problems = parse_text(tmp_path, """
        connect_port 8080
        connect_timeout 2.5
        nb_get_retry 4
        delay_before_retry 0.5
        alpha
        log_all_failures no
        http_protocol 1.0C
        url {
          path /health?full=1
          status_code 200-204 418
          digest 9F86D081884C7D659A2FEAA0C55AD015
        }
        url {
          path /
          regex "^ok"
          regex_no_match
        }""", kind="HTTP_GET")
    assert problems == []
    assert (check.connect_port, check.connect_timeout, check.retry, check.delay_before_retry) == (8080, 2.5, 4, 0.5)
    assert (check.alpha, check.log_all_failures, check.http_protocol) == (True, False, "1.0C")
    assert check.url[0].status_code == ((200, 204), (418, 418)) and check.url[0].path == "/health?full=1"
    assert (check.url[1].regex, check.url[1].regex_no_match) == ("^ok", True)


def test_misc_path_takes_the_rest_of_the_line(tmp_path):
    check, problems = parse_text(tmp_path, '    misc_path "/usr/bin/check --port 80"\n    misc_dynamic\n'
                                           '    user nobody nogroup', kind="MISC_CHECK")
    assert problems == []
    assert check.misc_path == ("/usr/bin/check", "--port", "80") and check.misc_dynamic
    assert check.user == ("nobody", "nogroup")


def test_file_check_resolves_the_global_track_file(tmp_path):
    check, problems = parse_text(tmp_path, "    track_file TF\n    weight 20 reverse", kind="FILE_CHECK",
                                 globals_="track_file TF {\n file /run/tf\n weight 5\n}")
    assert problems == []
    assert (check.track_file, check.weight, check.reverse) == ("/run/tf", 20, True)


@pytest.mark.parametrize("body, kind, line, keyword, words", [
    ("    retry three", "TCP_CHECK", 5, "retry", "not an integer"),
    ("    connect_port 80\n    misc_path /bin/true", "TCP_CHECK", 6, "misc_path", "Unknown keyword 'misc_path'"),
    ("    url {\n      path /\n      digest xyz\n    }", "HTTP_GET", 7, "digest", "MD5 digest"),
    ("    url {\n      path /\n      status_code 200 999\n    }", "HTTP_GET", 7, "status_code", "HTTP status"),
    ("    type SRV", "DNS_CHECK", 5, "type", "must be one of"),
    ("    payload abc", "UDP_CHECK", 5, "payload", "hex digits"),
    ("    track_file NOPE", "FILE_CHECK", 5, "track_file", "track_file NOPE not found"),
    ("    alpha maybe", "TCP_CHECK", 5, "alpha", "not true or false"),
])
def test_problems_name_the_line_and_keyword(tmp_path, body, kind, line, keyword, words):
    check, problems = parse_text(tmp_path, body, kind=kind)
    assert check is None and len(problems) == 1, problems
    p = problems[0]
    assert (p.line, p.keyword, p.kind) == (line, keyword, "error") and words in p.detail, p
    assert str(p) == f"{p.source}: line {line}: {keyword}: {p.detail}"


def test_what_xlb_cannot_do_is_named_unsupported(tmp_path):
    _, problems = parse_text(tmp_path, "    name bfd1", kind="BFD_CHECK")
    assert [(p.keyword, p.kind, p.detail) for p in problems] == [
        ("BFD_CHECK", "unsupported", "BFD health checks")]
    assert str(problems[0]).endswith(": line 4: BFD_CHECK: not supported by xlb: BFD health checks")
    _, problems = parse_text(tmp_path, "    connect_port 80\n    fwmark 7")
    assert [(p.line, p.keyword, p.kind) for p in problems] == [(6, "fwmark", "unsupported")]


def test_the_corpus_checker_blocks_parse_as_keepalived_reads_them():
    files = sorted(glob.glob(os.path.join(CORPUS, "configs", "*.conf")))
    if not files:
        pytest.skip("the shared keepalived corpus is not there")
    parsed = blocks = 0
    for path in files:
        name = os.path.basename(path)
        said = {}
        txt = os.path.join(CORPUS, "keepalived-t", name[:-5] + ".txt")
        if os.path.exists(txt):
            with open(txt) as f:
                for m in re.finditer(rf"\({re.escape(name)}: Line (\d+)\) (.*)", f.read()):
                    said.setdefault(int(m.group(1)), []).append(m.group(2))
        nodes = nodes_of(path)
        for block, real in checker_blocks(nodes):
            blocks += 1
            check, problems = kaconf.parse(block, track_files(nodes))
            parsed += check is not None
            assert (check is None) == bool(problems)
            if any("skipping" in m for m in said.get(real.line, ())):
                continue      # keepalived dropped the real server (a bad address) and never read its checkers
            for p in problems:
                if p.kind == "error" and os.path.basename(p.source) == name:
                    assert p.line in said, f"{name}: line {p.line}: {p.keyword}: {p.detail}: keepalived is silent"
                    if p.detail.startswith("Unknown keyword"):
                        assert p.detail in said[p.line], (name, p.line, said[p.line])
    assert blocks > 30000 and parsed > blocks - 200, (parsed, blocks)
