"""The CLI's parser as shell completion sees it (`make completion` runs shtab on `parser`): arguments that name a
file or a directory say so, so that `xlb run --config <TAB>` offers files. shtab reads `action.complete`; the
values below are shtab.FILE and shtab.DIRECTORY, written out so that xlb does not need shtab to run."""
import argparse

from .cli import build_parser

FILE = {"bash": "_shtab_compgen_files", "zsh": "_files", "tcsh": "f"}
DIRECTORY = {"bash": "_shtab_compgen_dirs", "zsh": "_files -/", "tcsh": "d"}
PATHS = {"config": FILE, "file": FILE, "keepalived": FILE, "marks": FILE, "socket": FILE, "pin_dir": DIRECTORY,
         "bird_socket": FILE, "bird_include": FILE}


def _parsers(p):
    yield p
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def parser():
    """build_parser() with each path argument marked for completion."""
    p = build_parser()
    for sub in _parsers(p):
        for action in sub._actions:
            if action.dest in PATHS:
                action.complete = PATHS[action.dest]
    return p
