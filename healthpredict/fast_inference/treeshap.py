"""Exact TreeSHAP of an XGBoost model from tables precomputed per leaf (the "Fast TreeSHAP v2" idea).

Path-dependent TreeSHAP (what XGBoost's ``pred_contribs`` computes) splits each leaf's value among the distinct
features on its path. For a leaf with value ``v`` and path features ``F`` (``d`` of them), feature ``i`` gets

    v · (o_i − z_i) · Σ_{S ⊆ F∖{i}, S ⊆ H} |S|!(d−|S|−1)!/d! · Π_{j ∈ F∖S∖{i}} z_j

where ``z_j`` is the product of the cover fractions of the path's splits on ``j``, ``o_j`` is 1 when the row
takes every one of those splits the leaf's way (else 0), and ``H`` the features with ``o_j = 1``. Everything
but ``o`` is fixed by the model, so each leaf's share is tabulated at load for every pattern of ``o`` over its
path's features: ``d · 2**d`` float32 values a leaf. A row then costs one comparison per split (each node's
pattern is its parent's, with the slot of the split it takes cleared when the row goes the other way) and ``d``
table reads per leaf, where the recursive algorithm does ``O(d²)`` work per leaf. The bias is ``v(∅)``: the
margin's bias plus each leaf's value times its path's cover fraction.

Models whose tables would exceed :data:`TABLE_BUDGET_BYTES` raise :class:`CompileError`; callers then use
XGBoost's own ``pred_contribs``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from healthpredict.fast_inference.base import CompileError
from healthpredict.fast_inference.trees import xgboost_json_trees

#: Largest table (bytes) built at load. A 300-tree depth-6 model trained on the real split needs 8 MB (at most
#: 29 MB, were every leaf at depth 6 on six distinct features); the search's largest, 600 trees of depth 7, up to
#: 275 MB, and such a model falls back to XGBoost's own TreeSHAP.
TABLE_BUDGET_BYTES = 64 * 2**20


class TreeShap:
    """The per-leaf tables of one XGBoost model; :meth:`contributions` explains rows of encoded columns."""

    def __init__(self, trees: list[dict[str, Any]], bias: float, n_features: int) -> None:
        self.n_features = n_features
        feature: list[int] = []  # per node (global ids, tree after tree); a leaf's entries are never read
        threshold: list[float] = []
        default_left: list[bool] = []
        first_node, first_leaf = [0], [0]  # where each tree's nodes and leaves start
        order: list[int] = []  # every node, parents before children
        edge: dict[int, tuple[int, bool, int]] = {}  # non-root node → (its parent, is its left child, its slot)
        leaf_node: list[int] = []
        slots: list[list[int]] = []  # per leaf: the feature of each slot (the distinct features on its path)
        zeros: list[list[float]] = []  # per leaf: each slot's "zero fraction" z (the product of its cover ratios)
        values: list[float] = []
        self.bias = bias  # v(∅): the margin's bias plus each leaf's value weighted by its path's cover fraction
        for tree in trees:
            left, right, split = tree["left_children"], tree["right_children"], tree["split_indices"]
            condition = np.asarray(tree["split_conditions"], dtype=np.float32)
            cover = np.asarray(tree["sum_hessian"], dtype=np.float64)
            offset = first_node[-1]
            feature += [int(f) if c != -1 else 0 for f, c in zip(split, left, strict=True)]
            threshold += condition.tolist()
            default_left += [bool(d) for d in tree["default_left"]]
            stack: list[tuple[int, int, list[int], list[float]]] = [(0, 0, [], [])]  # node, depth, slots, zeros
            while stack:
                node, depth, path_slots, path_zeros = stack.pop()
                order.append(offset + node)
                if depth > 62:
                    raise CompileError("a tree deeper than 62 levels")  # a path's pattern is one int64 of bits
                if left[node] == -1:
                    leaf_node.append(offset + node)
                    slots.append(path_slots)
                    zeros.append(path_zeros)
                    values.append(float(condition[node]))
                    self.bias += float(condition[node]) * math.prod(path_zeros)
                    continue
                column = int(split[node])
                if column >= n_features:
                    raise CompileError(f"a split on column {column} of {n_features}")
                for child, goes_left in ((left[node], True), (right[node], False)):
                    fraction = cover[child] / cover[node] if cover[node] > 0 else 0.0
                    child_slots, child_zeros = list(path_slots), list(path_zeros)
                    if column in child_slots:  # a feature split again: one slot, fractions multiplied
                        slot = child_slots.index(column)
                        child_zeros[slot] *= fraction
                    else:
                        slot = len(child_slots)
                        child_slots.append(column)
                        child_zeros.append(fraction)
                    edge[offset + child] = (offset + node, goes_left, slot)
                    stack.append((child, depth + 1, child_slots, child_zeros))
            first_node.append(offset + len(left))
            first_leaf.append(len(values))
            if len(order) != first_node[-1]:  # e.g. the deleted nodes a pruned tree keeps in its saved model
                raise CompileError(f"{first_node[-1] - len(order)} node(s) of tree {len(first_node) - 2} are not "
                                   "reachable from its root (deleted by pruning?)")  # fmt: skip
        sizes = [len(s) * 2 ** len(s) for s in slots]  # Python ints: the sum cannot overflow however wide a path
        if (table_bytes := sum(sizes) * 4) > TABLE_BUDGET_BYTES:
            megabytes = table_bytes / 2**20
            raise CompileError(f"TreeSHAP tables would take {megabytes:.0f} MB (> {TABLE_BUDGET_BYTES / 2**20:.0f})")
        width = max(max((len(s) for s in slots), default=0), 1)
        self.split_feature = np.asarray(feature, dtype=np.int64)
        self.split_threshold = np.asarray(threshold, dtype=np.float32)
        self.split_default_left = np.asarray(default_left, dtype=np.bool_)
        self.tree_first_node = np.asarray(first_node, dtype=np.int64)
        self.tree_first_leaf = np.asarray(first_leaf, dtype=np.int64)
        self.order = np.asarray(order, dtype=np.int64)
        self.parent = np.full(len(order), -1, dtype=np.int64)
        self.edge_left = np.zeros(len(order), dtype=np.bool_)
        self.edge_slot = np.zeros(len(order), dtype=np.int64)
        for node, (parent, is_left, slot) in edge.items():
            self.parent[node], self.edge_left[node], self.edge_slot[node] = parent, is_left, slot
        self.leaf_node = np.asarray(leaf_node, dtype=np.int64)
        self.leaf_value = np.asarray(values, dtype=np.float64)
        self.leaf_width = np.asarray([len(s) for s in slots], dtype=np.int64)
        self.leaf_table = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.slot_feature = np.zeros((len(values), width), dtype=np.int64)
        self.slot_zero = np.zeros((len(values), width), dtype=np.float64)
        for k in range(len(values)):
            self.slot_feature[k, : len(slots[k])] = slots[k]
            self.slot_zero[k, : len(zeros[k])] = zeros[k]
        build, self._explain = _kernels()
        self.table = build(self.leaf_width, self.leaf_table, self.leaf_value, self.slot_zero, _shapley_weights(width))

    @classmethod
    def from_xgboost(cls, model: Any, n_features: int) -> TreeShap:
        trees, bias = xgboost_json_trees(model)
        return cls(trees, bias, n_features)

    def contributions(self, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """Rows of encoded columns (float32, as XGBoost reads them) → (per-column SHAP values, margins, bias)."""
        if matrix.ndim != 2 or matrix.shape[1] != self.n_features:
            raise ValueError(f"expected rows of {self.n_features} encoded columns, got shape {matrix.shape}")
        phi = self._explain(
            np.ascontiguousarray(matrix, dtype=np.float32), self.split_feature, self.split_threshold,
            self.split_default_left, self.tree_first_node, self.tree_first_leaf, self.order, self.parent,
            self.edge_left, self.edge_slot, self.leaf_node, self.leaf_value, self.leaf_width, self.leaf_table,
            self.slot_feature, self.slot_zero, self.table,
        )  # fmt: skip
        return phi, self.bias + phi.sum(axis=1), self.bias


def _shapley_weights(width: int) -> np.ndarray:
    """``weights[d, s] = s! (d − s − 1)! / d!``: the Shapley weight of a coalition of ``s`` among ``d`` players."""
    weights = np.zeros((width + 1, width + 1))
    for d in range(1, width + 1):
        for s in range(d):
            weights[d, s] = math.factorial(s) * math.factorial(d - s - 1) / math.factorial(d)
    return weights


@functools.cache
def _kernels() -> tuple[Callable[..., np.ndarray], Callable[..., np.ndarray]]:
    """The table builder and the per-row explanation (numba; each compiled on first use, once per process)."""
    import numba

    @numba.njit(nogil=True, cache=False)
    def build(
        leaf_width: np.ndarray,
        leaf_table: np.ndarray,
        leaf_value: np.ndarray,
        slot_zero: np.ndarray,
        weights: np.ndarray,
    ) -> np.ndarray:  # pragma: no cover - compiled
        table = np.zeros(leaf_table[-1], dtype=np.float32)
        poly = np.zeros(leaf_width.max() + 1 if leaf_width.shape[0] else 1)
        for leaf in range(leaf_width.shape[0]):
            d = leaf_width[leaf]
            if d == 0:
                continue
            half = 1 << (d - 1)
            for i in range(d):
                for pattern in range(half):  # bit b: the b-th other slot (slots ≠ i, in order) is hot
                    # poly[m]: the elementary symmetric polynomial of degree m of the hot slots' zero fractions
                    poly[:] = 0.0
                    poly[0] = 1.0
                    n_hot, cold_product, b = 0, 1.0, 0
                    for j in range(d):
                        if j == i:
                            continue
                        z = slot_zero[leaf, j]
                        if (pattern >> b) & 1:
                            n_hot += 1
                            for m in range(n_hot, 0, -1):
                                poly[m] += poly[m - 1] * z
                        else:
                            cold_product *= z
                        b += 1
                    # S ⊆ H: the hot slots outside S contribute their z, so |S| = n_hot − m for poly[m]
                    total = 0.0
                    for m in range(n_hot + 1):
                        total += weights[d, n_hot - m] * poly[m]
                    # the entries of the whole pattern with slot i cold and hot: bit i inserted into ``pattern``
                    low = pattern & ((1 << i) - 1)
                    full = ((pattern >> i) << (i + 1)) | low
                    share = leaf_value[leaf] * total * cold_product
                    z = slot_zero[leaf, i]
                    row = leaf_table[leaf] + i * (half << 1)
                    table[row + full] = share * (0.0 - z)
                    table[row + (full | (1 << i))] = share * (1.0 - z)
        return table

    @numba.njit(nogil=True, cache=False)
    def explain(
        matrix: np.ndarray,
        split_feature: np.ndarray,
        split_threshold: np.ndarray,
        split_default_left: np.ndarray,
        tree_first_node: np.ndarray,
        tree_first_leaf: np.ndarray,
        order: np.ndarray,
        parent: np.ndarray,
        edge_left: np.ndarray,
        edge_slot: np.ndarray,
        leaf_node: np.ndarray,
        leaf_value: np.ndarray,
        leaf_width: np.ndarray,
        leaf_table: np.ndarray,
        slot_feature: np.ndarray,
        slot_zero: np.ndarray,
        table: np.ndarray,
    ) -> np.ndarray:  # pragma: no cover - compiled
        rows = matrix.shape[0]
        out = np.zeros((rows, matrix.shape[1]))
        # scratch, written for every node (parents first) before it is read
        goes_left = np.empty(split_feature.shape[0], dtype=np.bool_)
        hot = np.empty(split_feature.shape[0], dtype=np.int64)  # per node: bit s = the row takes its path's slot s
        for row in range(rows):
            for tree in range(tree_first_node.shape[0] - 1):
                for k in range(tree_first_node[tree], tree_first_node[tree + 1]):  # parents before children
                    node = order[k]
                    up = parent[node]
                    if up < 0:
                        hot[node] = -1
                    else:
                        hot[node] = hot[up] & ~(np.int64(goes_left[up] != edge_left[node]) << edge_slot[node])
                    x = matrix[row, split_feature[node]]  # a leaf's answer is never read
                    goes_left[node] = split_default_left[node] if x != x else x < split_threshold[node]
                for leaf in range(tree_first_leaf[tree], tree_first_leaf[tree + 1]):
                    d = leaf_width[leaf]
                    if d == 0:
                        continue
                    pattern = hot[leaf_node[leaf]] & ((np.int64(1) << d) - 1)
                    entry = leaf_table[leaf] + pattern
                    for i in range(d):
                        out[row, slot_feature[leaf, i]] += table[entry]
                        entry += np.int64(1) << d
        return out

    return build, explain
