"""keepalived.conf's lines (reader.py) nested into a tree of keyword nodes, as keepalived's parser nests them: a
``{`` opens a block for the line just before it, ``}`` closes it, and a file that ends inside blocks is cut short.
Pure: no bcc, no root. Problems are returned, never raised, with the file and line they belong to.
"""
from __future__ import annotations

from dataclasses import dataclass

from .reader import Line, ReadProblem


@dataclass
class Node:
    """One keyword line and, if a ``{ }`` followed it, the nodes inside (``children`` is None without a block)."""

    keyword: str
    args: tuple
    file: str
    line: int
    children: list | None = None
    closed: bool = True  # False if the file ended inside this node's block

    def where(self) -> str:
        return f"{self.file}: line {self.line}"

    def text(self) -> str:
        return " ".join((self.keyword,) + tuple(self.args))


def build_tree(lines: list[Line]) -> tuple[list[Node], list[ReadProblem]]:
    """Nest lines into nodes: ``{`` opens a block for the node on the line just before it, ``}`` closes it."""
    root: list[Node] = []
    stack: list[Node] = []
    problems = []
    last = None  # the node that a following "{" would open
    for ln in lines:
        if ln.words == ("{",):
            if last is not None and last.children is None:
                last.children = []
                last.closed = False
                stack.append(last)
            else:
                problems.append(ReadProblem(ln.file, ln.line, "unexpected '{'"))
            last = None
            continue
        if ln.words == ("}",):
            if stack:
                stack.pop().closed = True
            else:
                problems.append(ReadProblem(ln.file, ln.line, "extra '}'"))
            last = None
            continue
        node = Node(ln.words[0], tuple(ln.words[1:]), ln.file, ln.line)
        (stack[-1].children if stack else root).append(node)
        last = node
    return root, problems + unclosed(stack)


def unclosed(stack: list[Node]) -> list[ReadProblem]:
    """keepalived's verdict on a file that ends inside blocks (a file cut short): "There are N missing '}'s"."""
    if not stack:
        return []
    first = stack[0]
    return [ReadProblem(first.file, first.line, f"There are {len(stack)} missing '}}'s or extra '{{'s (the "
                                                f"{first.keyword} block opened here is not closed: a file cut short?)",
                        everywhere=True)]
