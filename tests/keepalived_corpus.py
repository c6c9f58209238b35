"""Compare xlb's keepalived.conf importer with keepalived 2.2.7 over the shared corpus (see docs/import.md).

Run as a script for the table in docs/import.md: ``.venv/bin/python tests/keepalived_corpus.py [-v]``.
tests/test_keepalived_corpus.py asserts the same comparison.
"""
import os
import re
import sys
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from xlb.importers.keepalived import translate as keepalived  # noqa: E402
from xlb.errors import ConfigError  # noqa: E402
from xlb.importers.keepalived.reader import Reader  # noqa: E402
from xlb.importers.keepalived.tree import build_tree  # noqa: E402
from xlb.importers.keepalived.checks import CHECKERS  # noqa: E402

CORPUS = os.environ.get("XLB_KEEPALIVED_CORPUS",
                        os.path.join(os.path.dirname(HERE), "..", "shared", "keepalived-corpus"))
if not os.path.isdir(CORPUS):
    CORPUS = "/work/shared/keepalived-corpus"

_LINE = re.compile(r"^\((?:(?P<file>[^:()]+): )?Line (?P<line>\d+)\) (?P<msg>.*)$")
# keepalived's checks after parsing (validate_check_config): no line number, always about a virtual server.
_VALIDATION = re.compile(r"^(Virtual server |VS \[|VS FWM|WARNING - (fwmark )?virtual server|Warning - quorum|"
                         r"Warning: Virtual server|virtual server \[|"
                         r"There are \d+ missing)")  # a file cut short: an error wherever it ends


# keepalived checks the script's user exists on the machine it runs on: a fact about that machine, not the file.
_ENVIRONMENT = re.compile(r"(Unable to set default user|Failed to set uid/gid|Error setting global script uid)")


@dataclass
class Result:
    name: str
    rc: int
    ka_vs: dict = field(default_factory=dict)  # block (file, first line) -> [(line, msg)] keepalived reported in it
    ka_checker: list = field(default_factory=list)  # reported inside health-check blocks (xlb checks them too)
    ka_environment: list = field(default_factory=list)  # about script users of the machine keepalived ran on
    ka_validation: list = field(default_factory=list)  # keepalived's post-parse virtual-server messages
    ka_other: int = 0  # keepalived messages about other sections
    outcome: str = ""  # "ok" | "unsupported" | "error" | "crash"
    problems: tuple = ()
    detail: str = ""

    @property
    def ka_vs_problems(self):
        """keepalived -t reported a problem of a virtual server, its checker blocks included (xlb reads them now);
        keepalived's deprecation notice (``nb_get_retry is deprecated``) is not one: it runs the block as written."""
        return bool(self.ka_vs or self.ka_validation or any("deprecated" not in m for m in self.ka_checker))


def spans(path):
    """Top-level virtual_server/virtual_server_group blocks and health-check blocks: {file: [(first, last)]}."""
    r = Reader()
    r.read(path)
    root, _ = build_tree(r.lines)
    blocks, checkers = {}, {}

    def last_line(node):
        return max([node.line] + [last_line(c) for c in node.children or ()])

    def walk(node):
        for c in node.children or ():
            if c.keyword in CHECKERS:
                checkers.setdefault(os.path.basename(c.file), []).append((c.line, last_line(c) + 1))
            walk(c)
    for node in root:
        if node.keyword in ("virtual_server", "virtual_server_group"):
            blocks.setdefault(os.path.basename(node.file), []).append((node.line, last_line(node) + 1))
            walk(node)
    return blocks, checkers


def _inside(table, file, line):
    return next(((file, a) for a, b in table.get(file, ()) if a <= line <= b), None)


def compare(name):
    path = os.path.join(CORPUS, "configs", name)
    rcs = dict(line.split("\t") for line in open(os.path.join(CORPUS, "rc.tsv")).read().split("\n") if line)
    res = Result(name, int(rcs[name]))
    blocks, checkers = spans(path)
    with open(os.path.join(CORPUS, "keepalived-t", name[:-5] + ".txt"), errors="replace") as f:
        for msg in f.read().splitlines():
            m = _LINE.match(msg)
            if m:
                file = m.group("file") or name
                line = int(m.group("line"))
                block = _inside(blocks, file, line)
                if block is None:
                    res.ka_other += 1
                elif _ENVIRONMENT.search(msg):
                    res.ka_environment.append(msg)
                elif _inside(checkers, file, line):
                    res.ka_checker.append(msg)
                else:
                    res.ka_vs.setdefault(block, []).append((line, m.group("msg")))
            elif _VALIDATION.match(msg):
                res.ka_validation.append(msg)
            elif msg.strip():
                res.ka_other += 1
    try:
        imp = keepalived.load(path)
        res.outcome = "warning" if imp.reported else "ok"  # runs, as keepalived does, after its warnings
        res.problems = imp.reported
        res.detail = f"{len(imp.config.services)} services"
    except keepalived.KeepalivedError as e:
        res.problems = e.problems
        res.outcome = "unsupported" if e.only_unsupported else "error"
    except ConfigError as e:
        res.outcome = "error"
        res.detail = str(e)
        res.problems = (keepalived.Problem(e.source, int(e.where.split()[-1]) if e.where.startswith("line ") else 0,
                                           "(config)", e.message),)
    except Exception as e:  # noqa: BLE001 - the point is to catch crashes
        res.outcome = "crash"
        res.detail = repr(e)
    res.blocks = blocks
    return res


def missed_blocks(res):
    """Blocks in which keepalived reported a problem (parsing it) and xlb reported no error."""
    reported = {_inside(res.blocks, os.path.basename(p.file), p.line) for p in res.problems
                if p.kind in ("error", "warning")}
    missed = {b: msgs for b, msgs in res.ka_vs.items() if b not in reported}
    if res.ka_validation and not any(p.kind in ("error", "warning") for p in res.problems):
        missed[("(after parsing)", 0)] = res.ka_validation
    return missed


def names():
    return sorted(os.listdir(os.path.join(CORPUS, "configs")))


def main(argv):
    verbose = "-v" in argv
    results = [compare(n) for n in names()]
    by = {}
    for r in results:
        ka = "clean" if r.rc == 0 else ("vs-problems" if r.ka_vs_problems else f"other-rc{r.rc}")
        by.setdefault((ka, r.outcome), []).append(r)
    for key in sorted(by):
        print(f"{key[0]:14} {key[1]:12} {len(by[key]):4}  {' '.join(r.name for r in by[key][:12])}")
    missed = [(r.name, missed_blocks(r)) for r in results if missed_blocks(r)]
    print(f"virtual-server blocks keepalived reports a problem in and xlb does not: "
          f"{sum(len(m) for _, m in missed)} in {len(missed)} files")
    for label, attr in (("inside health-check blocks", "ka_checker"), ("about script users", "ka_environment")):
        n = [r for r in results if getattr(r, attr)]
        print(f"keepalived messages {label}: {sum(len(getattr(r, attr)) for r in n)} in {len(n)} files")
    if verbose:
        for name, miss in missed:
            print("  ", name, list(miss.values())[:3])
        for r in results:
            if r.outcome in ("error", "unsupported", "crash"):
                print(f"--- {r.name} rc={r.rc} {r.outcome} {r.detail}")
                for p in r.problems[:6]:
                    print("     ", p)
                for v in r.ka_validation[:4]:
                    print("   ka:", v)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
