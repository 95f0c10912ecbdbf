"""Union-find over integer channel ids, with vectorised root lookup."""

from __future__ import annotations

import numpy as np

__all__ = ["UnionFind"]


class UnionFind:
    """Disjoint sets of channel ids; each set may carry a 'blocked' reason.

    A weak reason (a value computed from weights, whose channels are not followed) gives
    way to a strong one when their sets meet: it says why only where nothing else does.

    Example:
        >>> uf = UnionFind()
        >>> a = uf.new(3)
        >>> uf.union(int(a[0]), int(a[2]))
        >>> bool(uf.find(0) == uf.find(2)), bool(uf.find(0) == uf.find(1))
        (True, False)
    """

    def __init__(self) -> None:
        self._parent = np.zeros(1024, dtype=np.int64)
        self._size = 0
        self.reasons: dict[int, str] = {}
        self.weak: set[int] = set()  # roots whose reason is weak

    def __len__(self) -> int:
        return self._size

    def new(self, n: int) -> np.ndarray:
        """Create ``n`` fresh singleton sets and return their ids."""
        start = self._size
        if start + n > len(self._parent):
            grown = np.zeros(max(2 * len(self._parent), start + n), dtype=np.int64)
            grown[:start] = self._parent[:start]
            self._parent = grown
        ids = np.arange(start, start + n, dtype=np.int64)
        self._parent[start : start + n] = ids
        self._size += n
        return ids

    def find(self, x: int) -> int:
        parent = self._parent
        root = x
        while parent[root] != root:
            root = int(parent[root])
        while parent[x] != root:
            parent[x], x = root, int(parent[x])
        return root

    def roots(self, ids: np.ndarray) -> np.ndarray:
        """Roots of an array of ids (same shape); negative ids stay as they are."""
        ids = np.asarray(ids, dtype=np.int64)
        out = ids.copy()
        valid = out >= 0
        cur = out[valid]
        while True:
            nxt = self._parent[cur]
            if np.array_equal(nxt, cur):
                break
            cur = nxt
        out[valid] = cur
        return out

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if rb < ra:  # keep the older id as root: deterministic, and reasons stay put
            ra, rb = rb, ra
        self._parent[rb] = ra
        self._take_reason(rb, ra)

    def _take_reason(self, old: int, root: int) -> None:
        """Move ``old``'s reason (it joined ``root``'s set) to ``root``."""
        reason, weak = self.reasons.pop(old, None), old in self.weak
        self.weak.discard(old)
        if reason is not None:
            self._give(root, reason, weak)

    def _give(self, root: int, reason: str, weak: bool) -> None:
        """``root``'s reason, unless it has one already that is as strong."""
        if root not in self.reasons or root in self.weak and not weak:
            self.reasons[root] = reason
            (self.weak.add if weak else self.weak.discard)(root)

    def union_arrays(self, a: np.ndarray, b: np.ndarray) -> None:
        """Union ``a`` and ``b`` position by position (numpy broadcasting), vectorised.

        Each pass hooks every higher root onto the lowest root it meets; parents only
        ever point to smaller ids, so the forest stays acyclic.
        """
        a, b = np.broadcast_arrays(np.asarray(a, np.int64), np.asarray(b, np.int64))
        valid = (a >= 0) & (b >= 0)
        a, b = a[valid].ravel(), b[valid].ravel()
        changed = False
        while a.size:
            ra, rb = self.roots(a), self.roots(b)
            differ = ra != rb
            if not differ.any():
                break
            ra, rb = ra[differ], rb[differ]
            a, b = a[differ], b[differ]
            np.minimum.at(self._parent, np.maximum(ra, rb), np.minimum(ra, rb))
            changed = True
        if changed:
            self._move_reasons()

    def _move_reasons(self) -> None:
        for old in [r for r in self.reasons if self._parent[r] != r]:
            self._take_reason(old, self.find(old))

    def union_all(self, ids: np.ndarray) -> None:
        """Put every id of ``ids`` in one set."""
        flat = np.unique(self.roots(np.asarray(ids).ravel()))
        flat = flat[flat >= 0]
        for other in flat[1:]:
            self.union(int(flat[0]), int(other))

    def block(self, ids: np.ndarray, reason: str, weak: bool = False) -> None:
        """Mark the sets of ``ids`` as not prunable, keeping the first reason given (a
        strong one replaces a weak one)."""
        for root in np.unique(self.roots(np.asarray(ids).ravel())):
            if root >= 0:
                self._give(int(root), reason, weak)

    def reason(self, x: int) -> str | None:
        return self.reasons.get(self.find(x))
