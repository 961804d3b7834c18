"""SGLang router's approximate radix tree: which endpoints ("tenants") were sent which prompt text.

A character-level compressed trie. Each node holds a run of characters and, per tenant that passed
through it, the time of its last insert; the tree counts the characters each tenant owns. Matching
walks from the root as far as the text agrees (including part of a node); eviction removes a
tenant's least recently used leaves until it owns at most ``max_size`` characters. Time comes from
the injected clock.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection

from epp._util.clock import Clock


class _Node:
    __slots__ = ("children", "parent", "tenants", "text")

    def __init__(self, text: str, parent: _Node | None) -> None:
        self.text = text
        self.parent = parent
        self.children: dict[str, _Node] = {}
        self.tenants: dict[str, float] = {}


def _shared(a: str, b: str, start: int) -> int:
    """Length of the common prefix of ``a`` and ``b[start:]`` (binary search over C-speed compares)."""
    lo, hi = 0, min(len(a), len(b) - start)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if b.startswith(a[:mid], start):
            lo = mid
        else:
            hi = mid - 1
    return lo


class RadixTree:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.root = _Node("", None)
        self.tenant_chars: dict[str, int] = {}

    def insert(self, text: str, tenant: str) -> None:
        """Record ``tenant`` along the path of ``text``, splitting nodes where the text diverges."""
        now = self.clock.now()
        node = self.root
        self._own(node, tenant, now)
        i = 0
        while i < len(text):
            child = node.children.get(text[i])
            if child is None:
                leaf = _Node(text[i:], node)
                node.children[text[i]] = leaf
                self._own(leaf, tenant, now)
                return
            shared = _shared(child.text, text, i)
            if shared < len(child.text):
                middle = _Node(child.text[:shared], node)
                middle.tenants = dict(child.tenants)
                child.text = child.text[shared:]
                child.parent = middle
                middle.children[child.text[0]] = child
                node.children[text[i]] = middle
                child = middle
            self._own(child, tenant, now)
            node = child
            i += shared

    def _own(self, node: _Node, tenant: str, now: float) -> None:
        if tenant not in node.tenants:
            self.tenant_chars[tenant] = self.tenant_chars.get(tenant, 0) + len(node.text)
        node.tenants[tenant] = now

    def prefix_match(self, text: str, tenants: Collection[str]) -> tuple[int, str | None]:
        """(matched characters, tenant) for the deepest node on ``text``'s path that one of ``tenants``
        passed through; the most recently inserting such tenant wins. Nothing → (0, None)."""
        for candidate, _, matched in reversed(self._path(text)):
            owners = [(t, candidate.tenants[t]) for t in tenants if t in candidate.tenants]
            if owners:
                return matched, max(owners, key=lambda o: o[1])[0]
        return 0, None

    def _path(self, text: str) -> list[tuple[_Node, int, int]]:
        """The nodes ``text`` walks through from the root, each with where it starts in ``text`` and how far
        the text agrees with it (the last one may agree only in part)."""
        node, i = self.root, 0
        path: list[tuple[_Node, int, int]] = []
        while i < len(text):
            child = node.children.get(text[i])
            if child is None:
                break
            shared = _shared(child.text, text, i)
            path.append((child, i, i + shared))
            if shared < len(child.text):
                break
            node, i = child, i + shared
        return path

    def smallest_tenants(self, tenants: Collection[str]) -> list[str]:
        """The tenants (of those given) owning the fewest characters; unknown tenants own none."""
        sizes = {t: self.tenant_chars.get(t, 0) for t in tenants}
        least = min(sizes.values())
        return [t for t, size in sizes.items() if size == least]

    def withdraw(self, text: str, tenant: str, held: int) -> None:
        """Undo ``insert(text, tenant)`` past the first ``held`` characters (what ``tenant`` matched before
        the insert): it leaves the nodes on ``text``'s path that start there or deeper and that it owns
        nothing below, deepest first; nodes nobody owns any more are pruned."""
        for node, start, _ in reversed(self._path(text)):
            if start < held or tenant not in node.tenants or not self._is_leaf_for(node, tenant):
                break
            del node.tenants[tenant]
            self.tenant_chars[tenant] -= len(node.text)
            parent = node.parent
            if not node.children and not node.tenants and parent is not None:
                del parent.children[node.text[0]]

    def remove_tenant(self, tenant: str) -> None:
        """Forget a tenant everywhere (an endpoint left the pool)."""
        stack = [self.root]
        while stack:
            node = stack.pop()
            node.tenants.pop(tenant, None)
            stack.extend(node.children.values())
        self._prune(self.root)
        self.tenant_chars.pop(tenant, None)

    def _prune(self, node: _Node) -> None:
        for key, child in list(node.children.items()):
            self._prune(child)
            if not child.children and not child.tenants:
                del node.children[key]

    def evict(self, max_size: int) -> None:
        """Drop each over-size tenant's least recently used leaves until it owns ≤ ``max_size`` chars."""
        over = {t for t, size in self.tenant_chars.items() if size > max_size}
        if not over:
            return
        heap: list[tuple[float, int, str, _Node]] = []
        stack = [self.root]
        while stack:
            node = stack.pop()
            stack.extend(node.children.values())
            for tenant in over & node.tenants.keys():
                if node is not self.root and self._is_leaf_for(node, tenant):
                    heap.append((node.tenants[tenant], id(node), tenant, node))
        heapq.heapify(heap)
        while heap:
            _, _, tenant, node = heapq.heappop(heap)
            if self.tenant_chars.get(tenant, 0) <= max_size or tenant not in node.tenants:
                continue
            del node.tenants[tenant]
            self.tenant_chars[tenant] -= len(node.text)
            parent = node.parent
            if not node.children and not node.tenants and parent is not None:
                del parent.children[node.text[0]]
            if parent is not None and parent is not self.root and tenant in parent.tenants and self._is_leaf_for(parent, tenant):
                heapq.heappush(heap, (parent.tenants[tenant], id(parent), tenant, parent))

    @staticmethod
    def _is_leaf_for(node: _Node, tenant: str) -> bool:
        return not any(tenant in child.tenants for child in node.children.values())
