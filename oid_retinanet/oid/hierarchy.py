"""The Open Images label hierarchy (bbox_labels_600_hierarchy.json and the 500-class challenge trees).

Nodes are MIDs. A class may sit under several parents, so the hierarchy is a DAG: ancestors are the union
over every path to the root. As the originals and the official expansion tool do, only `Subcategory` edges
are followed by default (`Part` edges describe parts, not kinds). The root ("Entity") is never an ancestor.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable
from functools import cached_property

from oid_retinanet.errors import OIDInputError

DEFAULT_EDGES = ("Subcategory",)


class Hierarchy:
    """Parent and child relations between MIDs, built from one hierarchy JSON."""

    def __init__(self, tree: dict, source: str = "<memory>", edges: Iterable[str] = DEFAULT_EDGES):
        self.source = source
        self.edges = tuple(edges)
        if not isinstance(tree, dict) or "LabelName" not in tree:
            raise OIDInputError("hierarchy root has no LabelName", source)
        self.root: str = tree["LabelName"]
        self._children: dict[str, list[str]] = {self.root: []}
        self._parents: dict[str, list[str]] = {self.root: []}
        self._walk(tree)

    def _walk(self, tree: dict) -> None:
        stack = [tree]  # depth-first in file order, so parents and MIDs keep the order they are met in
        while stack:
            node = stack.pop()
            mid = node["LabelName"]
            found = []
            for kind in self.edges:
                for child in node.get(kind, ()):
                    if not isinstance(child, dict) or "LabelName" not in child:
                        raise OIDInputError(f"a {kind} entry of {mid} has no LabelName", self.source)
                    cmid = child["LabelName"]
                    self._children.setdefault(cmid, [])
                    parents = self._parents.setdefault(cmid, [])
                    if mid not in parents:
                        parents.append(mid)
                    if cmid not in self._children[mid]:
                        self._children[mid].append(cmid)
                    found.append(child)
            stack.extend(reversed(found))

    @classmethod
    def from_json(cls, path: str, edges: Iterable[str] = DEFAULT_EDGES) -> Hierarchy:
        """Read a hierarchy JSON file."""
        try:
            with open(path, encoding="utf-8") as f:
                tree = json.load(f)
        except json.JSONDecodeError as exc:
            raise OIDInputError(f"not valid JSON: {exc}", path) from None
        return cls(tree, source=str(path), edges=edges)

    @property
    def mids(self) -> list[str]:
        """Every MID in the hierarchy except the root, in first-seen order."""
        return [m for m in self._parents if m != self.root]

    def __contains__(self, mid: object) -> bool:
        return mid in self._parents

    def _check(self, mid: str) -> None:
        if mid not in self._parents:
            raise OIDInputError(f"MID {mid!r} is not in the hierarchy", self.source)

    def parents(self, mid: str) -> list[str]:
        """Direct parents of `mid` (the root excluded)."""
        self._check(mid)
        return [p for p in self._parents[mid] if p != self.root]

    def children(self, mid: str) -> list[str]:
        """Direct children of `mid`."""
        self._check(mid)
        return list(self._children[mid])

    def ancestors(self, mid: str) -> list[str]:
        """Every ancestor of `mid` over all paths, nearest first (breadth-first), the root excluded."""
        return self._closure(mid, self._parents)

    def descendants(self, mid: str) -> list[str]:
        """Every descendant of `mid` over all paths, nearest first (breadth-first)."""
        return self._closure(mid, self._children)

    def _closure(self, mid: str, links: dict[str, list[str]]) -> list[str]:
        self._check(mid)
        seen: dict[str, None] = {}
        queue = deque(links[mid])
        while queue:
            m = queue.popleft()
            if m in seen or m == self.root:
                continue
            seen[m] = None
            queue.extend(links[m])
        return list(seen)

    @cached_property
    def _depths(self) -> dict[str, int]:
        depth = {self.root: 0}
        queue = deque([self.root])
        while queue:
            m = queue.popleft()
            for c in self._children[m]:
                if c not in depth:
                    depth[c] = depth[m] + 1
                    queue.append(c)
        return depth

    def depth(self, mid: str) -> int:
        """Length of the shortest path from the root (the root's children have depth 1)."""
        self._check(mid)
        return self._depths[mid]

    def leaves(self) -> list[str]:
        """MIDs without children."""
        return [m for m in self.mids if not self._children[m]]

    def multi_parent(self) -> dict[str, list[str]]:
        """MIDs with more than one parent, with their parents."""
        return {m: self.parents(m) for m in self.mids if len(self._parents[m]) > 1}

    def ancestor_pairs(self) -> list[tuple[str, str]]:
        """Every (mid, ancestor) pair, for vectorised joins."""
        return [(m, a) for m in self.mids for a in self.ancestors(m)]
