"""Fitted XGBoost and random-forest trees in a compact layout, walked by a small numba-compiled loop."""

from __future__ import annotations

import functools
import json
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from sklearn.ensemble import RandomForestClassifier

from healthpredict.fast_inference.base import (
    CompileError,
)

log = logging.getLogger(__name__)

_LEAF = -1
#: Trees up to this depth are stored complete (see :class:`TreeEnsemble`); deeper ones as a node table.
COMPLETE_TREE_MAX_DEPTH = 10
#: One tree as ``(left, right, feature, threshold, missing_goes_left, leaf_value)`` per node; ``left == -1``: leaf.
Tree = tuple[Sequence[int], Sequence[int], Sequence[int], Sequence[float], Sequence[bool], Sequence[float]]


def _tree_depth(left: Sequence[int], right: Sequence[int]) -> int:
    depth, frontier = 0, [0]
    while frontier:
        frontier = [child for node in frontier if left[node] != _LEAF for child in (left[node], right[node])]
        depth += bool(frontier)
    return depth


class TreeEnsemble:
    """The trees of a fitted XGBoost or random-forest classifier, laid out for a numba-compiled walk.

    A row goes left at a node when ``x[feature] < threshold``, and a missing value (NaN) goes where the model
    sends it. sklearn's ``x <= t`` splits are stored with the next float32 above the largest float32 ≤ ``t``,
    the same test on float32 input. The answer is ``sigmoid(Σ leaves + bias)`` (``logistic``, XGBoost) or
    ``Σ leaves * scale`` (``mean``, a forest).

    Shallow trees (depth ≤ :data:`COMPLETE_TREE_MAX_DEPTH`, XGBoost's usual case) are stored *complete*: each
    tree is a heap of ``2**depth - 1`` split nodes (children of ``k`` at ``2k+1``, ``2k+2``) with ``2**depth``
    leaves below; a leaf above the bottom becomes splits that always go left (threshold +inf) over bottom
    leaves that all hold its value. Every row then takes exactly ``depth`` steps in every tree with no branch
    to mispredict, and the walk advances all trees one level at a time, so their memory loads overlap. A node
    is 8 bytes: ``feature * 2 + (missing goes right)`` and the float32 threshold. Deeper trees (random
    forests) use a node table: ``(feature, threshold, left child, child for a missing value)`` with the right
    child at ``left + 1`` and a leaf marked by feature -1 with its value's index.
    """

    def __init__(self, trees: Sequence[Tree], link: str, bias: float = 0.0, scale: float = 1.0,
                 less_equal: bool = False) -> None:  # fmt: skip
        if link not in ("logistic", "mean"):
            raise CompileError(f"unknown link {link!r}")
        if not trees:
            raise CompileError("the model has no trees")
        self.logistic, self.bias, self.scale = link == "logistic", float(bias), float(scale)
        self._less_equal = less_equal
        self.depth = max(_tree_depth(tree[0], tree[1]) for tree in trees)
        self.max_feature = max(
            (
                int(f)
                for left, _, feature, *_ in trees
                for f, child in zip(feature, left, strict=True)
                if child != _LEAF
            ),
            default=-1,
        )
        self.complete = self.depth <= COMPLETE_TREE_MAX_DEPTH
        if self.complete:
            self.nodes, self.leaf_values = self._complete_layout(trees)
            self.roots = np.zeros(0, dtype=np.int32)
        else:
            self.nodes, self.roots, self.leaf_values = self._table_layout(trees)
        self.thresholds = self.nodes.view(np.float32)  # the same memory: the threshold slot read as float32

    def _cut(self, threshold: float) -> float:
        return _strict_threshold(threshold) if self._less_equal else float(threshold)

    def _complete_layout(self, trees: Sequence[Tree]) -> tuple[np.ndarray, np.ndarray]:
        splits = 2**self.depth - 1
        nodes = np.zeros((len(trees), splits, 2), dtype=np.int32)
        nodes.view(np.float32)[:, :, 1] = np.inf  # padding: everything goes left
        leaf_values = np.zeros((len(trees), splits + 1))
        for t, (left, right, feature, threshold, missing_left, value) in enumerate(trees):
            stack = [(0, 0)]  # (node of the tree, position in the heap)
            while stack:
                node, position = stack.pop()
                if left[node] == _LEAF:  # every bottom leaf below it answers its value (the padding goes left)
                    first = last = position
                    while first < splits:
                        first, last = 2 * first + 1, 2 * last + 2
                    leaf_values[t, first - splits : last - splits + 1] = float(value[node])
                    continue
                nodes[t, position, 0] = int(feature[node]) * 2 + (not missing_left[node])
                nodes[t, position].view(np.float32)[1] = self._cut(threshold[node])
                stack += [(left[node], 2 * position + 1), (right[node], 2 * position + 2)]
        return nodes, leaf_values

    def _table_layout(self, trees: Sequence[Tree]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        records: list[tuple[int, float, int, int]] = []
        leaf_values: list[float] = []
        roots: list[int] = []
        for left, right, feature, threshold, missing_left, value in trees:
            base = len(records)
            roots.append(base)
            order = [0]  # breadth first: node order[k] is stored at base + k, children side by side
            for node in order:  # grows while iterating
                if left[node] == _LEAF:
                    records.append((_LEAF, 0.0, len(leaf_values), 0))
                    leaf_values.append(float(value[node]))
                    continue
                first = base + len(order)
                order += [left[node], right[node]]
                missing = first if missing_left[node] else first + 1
                records.append((int(feature[node]), self._cut(threshold[node]), first, missing))
        table = np.zeros((len(records), 4), dtype=np.int32)
        table[:, [0, 2, 3]] = [(r[0], r[2], r[3]) for r in records]
        table.view(np.float32)[:, 1] = [r[1] for r in records]
        return table, np.asarray(roots, dtype=np.int32), np.asarray(leaf_values, dtype=np.float64)

    @classmethod
    def from_xgboost(cls, model: Any) -> TreeEnsemble:
        """A binary ``XGBClassifier`` (gbtree, numerical splits) from its JSON model: thresholds, default
        directions and leaf values as saved; the bias is the logit of ``base_score``."""
        trees, bias = xgboost_json_trees(model)
        converted: list[Tree] = []
        for tree in trees:
            # A leaf's value sits in its split condition; both are float32 in the booster.
            conditions = np.asarray(tree["split_conditions"], dtype=np.float32).astype(np.float64).tolist()
            converted.append(
                (tree["left_children"], tree["right_children"], tree["split_indices"], conditions,
                 [bool(d) for d in tree["default_left"]], conditions)
            )  # fmt: skip
        return cls(converted, "logistic", bias=bias)

    @classmethod
    def from_random_forest(cls, model: RandomForestClassifier) -> TreeEnsemble:
        """A binary random forest: the mean over trees of each leaf's class-1 fraction, as ``predict_proba``."""
        if len(model.classes_) != 2 or model.n_outputs_ != 1:
            raise CompileError("tree runtime supports binary single-output forests only")
        converted: list[Tree] = []
        for estimator in model.estimators_:
            tree = estimator.tree_
            counts = tree.value[:, 0, :]
            totals = counts.sum(axis=1)
            positive = np.divide(counts[:, 1], totals, out=np.zeros(len(totals)), where=totals > 0)
            missing_left = getattr(tree, "missing_go_to_left", np.zeros(tree.node_count, dtype=bool))
            converted.append(
                (tree.children_left.tolist(), tree.children_right.tolist(), tree.feature.tolist(),
                 tree.threshold.tolist(), [bool(m) for m in missing_left], positive.tolist())
            )  # fmt: skip
        return cls(converted, "mean", scale=1.0 / len(converted), less_equal=True)

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        complete, table = _tree_kernels()
        return (complete if self.complete else table)(
            self.nodes, self.thresholds, self.roots, self.leaf_values, np.ascontiguousarray(matrix, dtype=np.float32),
            self.logistic, self.bias, self.scale,
        )  # fmt: skip


def xgboost_json_trees(model: Any) -> tuple[list[dict[str, Any]], float]:
    """The trees a binary ``XGBClassifier`` predicts with (gbtree, numerical splits, NaN as missing), as the
    booster's JSON model holds them, and the margin's bias (the logit of ``base_score``). The fields read from
    each tree: ``left_children``, ``right_children``, ``split_indices``, ``split_conditions`` (a leaf's value sits
    in its condition), ``default_left``, and for explanations ``sum_hessian`` (each node's cover)."""
    objective = model.get_params().get("objective") or "binary:logistic"
    if objective != "binary:logistic":
        raise CompileError(f"tree runtime expects binary:logistic, found {objective!r}")
    if model.missing is not None and not math.isnan(model.missing):
        raise CompileError(f"tree runtime treats only NaN as missing; the model's missing is {model.missing!r}")
    learner = json.loads(bytes(model.get_booster().save_raw("json")))["learner"]
    booster = learner["gradient_booster"]
    if booster.get("name") != "gbtree":
        raise CompileError(f"tree runtime expects the gbtree booster, found {booster.get('name')!r}")
    trees = booster["model"]["trees"]
    per_round = int(booster["model"]["gbtree_model_param"].get("num_parallel_tree", 1))
    begin, end = model._get_iteration_range(None)
    trees = trees[begin * per_round : (end * per_round if end else len(trees))]
    for tree in trees:
        if any(int(t) != 0 for t in tree.get("split_type", [])) or tree.get("categories"):
            raise CompileError("tree runtime does not handle categorical splits")
    base_score = float(np.float32(str(learner["learner_model_param"]["base_score"]).strip("[]").split(",")[0]))
    if not 0.0 < base_score < 1.0:
        raise CompileError(f"base_score {base_score} is not a probability")
    return trees, math.log(base_score / (1.0 - base_score))


def _strict_threshold(threshold: float) -> float:
    """The float32 ``c`` with ``x < c`` ⇔ ``x <= threshold`` for every float32 ``x``."""
    below = np.float32(threshold)
    if float(below) > threshold:  # rounded up: the largest float32 not above the threshold is one step down
        below = np.nextafter(below, np.float32(-np.inf))
    return float(np.nextafter(below, np.float32(np.inf)))


@functools.cache
def _tree_kernels() -> tuple[Callable[..., np.ndarray], Callable[..., np.ndarray]]:
    """The walks over complete trees and over a node table, with one signature
    ``(nodes, thresholds, roots, leaf_values, matrix, logistic, bias, scale)`` (``roots``: the node table's
    only). numba compiles each on its first call (about a second, once per process)."""
    import numba

    @numba.njit(nogil=True, cache=False)
    def link(total: float, logistic: bool, bias: float, scale: float) -> float:  # pragma: no cover - compiled
        return 1.0 / (1.0 + np.exp(-(total + bias))) if logistic else total * scale

    @numba.njit(nogil=True, cache=False)
    def complete_tree_probabilities(
        nodes: np.ndarray,
        thresholds: np.ndarray,
        roots: np.ndarray,
        leaf_values: np.ndarray,
        matrix: np.ndarray,
        logistic: bool,
        bias: float,
        scale: float,
    ) -> np.ndarray:  # pragma: no cover - compiled
        trees, splits = nodes.shape[0], nodes.shape[1]
        rows = matrix.shape[0]
        out = np.empty(rows)
        position = np.empty(trees, dtype=np.int64)
        for row in range(rows):
            position[:] = 0
            while position[0] < splits:  # every tree has the same depth: one level of all trees per pass
                for tree in range(trees):
                    k = position[tree]
                    code = nodes[tree, k, 0]
                    value = matrix[row, code >> 1]
                    right = np.int64(value >= thresholds[tree, k, 1]) + np.int64(value != value) * (code & 1)
                    position[tree] = 2 * k + 1 + right
            total = 0.0
            for tree in range(trees):
                total += leaf_values[tree, position[tree] - splits]
            out[row] = link(total, logistic, bias, scale)
        return out

    @numba.njit(nogil=True, cache=False)
    def table_tree_probabilities(
        nodes: np.ndarray,
        thresholds: np.ndarray,
        roots: np.ndarray,
        leaf_values: np.ndarray,
        matrix: np.ndarray,
        logistic: bool,
        bias: float,
        scale: float,
    ) -> np.ndarray:  # pragma: no cover - compiled
        rows = matrix.shape[0]
        sums = np.zeros(rows)
        for tree in range(roots.shape[0]):  # tree by tree: one tree's nodes stay in cache across the rows
            root = roots[tree]
            for row in range(rows):
                node = root
                feature = nodes[node, 0]
                while feature >= 0:
                    value = matrix[row, feature]
                    if value < thresholds[node, 1]:
                        node = nodes[node, 2]
                    elif value != value:  # NaN: the trained default direction
                        node = nodes[node, 3]
                    else:
                        node = nodes[node, 2] + 1
                    feature = nodes[node, 0]
                sums[row] += leaf_values[nodes[node, 2]]
        for row in range(rows):
            sums[row] = link(sums[row], logistic, bias, scale)
        return sums

    return complete_tree_probabilities, table_tree_probabilities
