"""Least squares and ridge from sufficient statistics, built in chunks of rows.

A wage model here is linear in a few hundred Mincer dummies plus a model's representation (tens
to hundreds of columns), over up to millions of person-years: the dense design never exists
whole. One pass builds, per group of rows (a split, a cross-fitting fold), the Gram matrix X'X,
X'Y, the targets' sums of squares and the row count. Everything else is small linear algebra on
those: a ridge fit on any union of groups is a solve of summed Grams, and its squared error on
another group is a quadratic form in that group's Gram, so choosing a penalty costs no pass over
the data. Only the final predictions (for bootstrap intervals and cross-fitted residuals) take
a second pass.

Solves add a tiny jitter to the diagonal (`solve`), so collinear or empty columns do not make
them fail. numpy alone does all of it: scikit-learn is not a dependency, and its
estimators would each need the dense design.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from eval.wages.design import MincerDesign

CHUNK_ROWS = 8192
#: Ridge penalties tried, per row, on the standardised representation columns.
PENALTIES = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


@dataclass
class Gram:
    """Sufficient statistics of a least-squares problem over a group of rows."""

    xx: np.ndarray  # (k, k)
    xy: np.ndarray  # (k, m)
    yy: np.ndarray  # (m,) sum of squares of each target
    ysum: np.ndarray  # (m,)
    n: int

    @classmethod
    def zeros(cls, k: int, m: int) -> Gram:
        return cls(np.zeros((k, k)), np.zeros((k, m)), np.zeros(m), np.zeros(m), 0)

    def __add__(self, other: Gram) -> Gram:
        return Gram(
            self.xx + other.xx,
            self.xy + other.xy,
            self.yy + other.yy,
            self.ysum + other.ysum,
            self.n + other.n,
        )

    def __sub__(self, other: Gram) -> Gram:
        return Gram(
            self.xx - other.xx,
            self.xy - other.xy,
            self.yy - other.yy,
            self.ysum - other.ysum,
            self.n - other.n,
        )


Matrix = Callable[[np.ndarray], np.ndarray]


class Features:
    """The Mincer columns, then (optionally) a representation standardised with the mean and
    standard deviation of the fitting rows: `features(index)` is a dense chunk."""

    def __init__(
        self, design: MincerDesign, extra: np.ndarray | None = None, fit: np.ndarray | None = None
    ):
        self.design = design
        self.extra = extra
        if extra is not None:
            rows = extra[fit] if fit is not None else extra
            self.mean = rows.mean(0, dtype=np.float64)
            self.scale = np.maximum(rows.std(0, dtype=np.float64), 1e-8)

    @property
    def width(self) -> int:
        return self.design.width + (0 if self.extra is None else self.extra.shape[1])

    @property
    def extra_columns(self) -> np.ndarray:
        """(width,) True for the representation's columns (the penalised ones)."""
        mask = np.zeros(self.width, dtype=bool)
        mask[self.design.width :] = True
        return mask

    def __call__(self, index: np.ndarray) -> np.ndarray:
        base = self.design.matrix(index)
        if self.extra is None:
            return base
        return np.hstack([base, (self.extra[index] - self.mean) / self.scale])


def grams(
    matrix: Matrix,
    targets: np.ndarray,
    groups: np.ndarray,
    count: int,
    width: int,
    chunk: int = CHUNK_ROWS,
) -> list[Gram]:
    """One Gram per group 0..count-1 (rows with a negative group are left out); `targets` is
    (N, m)."""
    out = [Gram.zeros(width, targets.shape[1]) for _ in range(count)]
    for start in range(0, len(groups), chunk):
        index = np.arange(start, min(start + chunk, len(groups)))
        index = index[groups[index] >= 0]
        if not len(index):
            continue
        X, Y, g = matrix(index), targets[index], groups[index]
        for group in np.unique(g):
            rows = g == group
            Xg, Yg = X[rows], Y[rows]
            out[group] += Gram(Xg.T @ Xg, Xg.T @ Yg, (Yg**2).sum(0), Yg.sum(0), int(rows.sum()))
    return out


def solve(gram: Gram, penalty: np.ndarray | float = 0.0) -> np.ndarray:
    """Coefficients (k, m) of least squares with a ridge `penalty` (per column, or one for all).

    A jitter of 1e-9 of the mean diagonal makes the system definite: a column that is zero on
    these rows (a level no fitting row has) gets coefficient 0, as its base would; collinear
    columns (a year dummy and observed experience on a panel that starts in one year) share the
    fit without blowing up. Should the solve still fail, the eigendecomposition's pseudo-inverse
    gives the minimum-norm fit."""
    k = gram.xx.shape[0]
    lhs = gram.xx + np.diag(np.broadcast_to(np.asarray(penalty, dtype=np.float64), (k,)))
    lhs = (lhs + lhs.T) / 2
    jitter = 1e-9 * max(float(np.trace(lhs)) / max(k, 1), 1.0)
    try:
        beta = np.linalg.solve(lhs + jitter * np.eye(k), gram.xy)
        if np.isfinite(beta).all():
            return beta
    except np.linalg.LinAlgError:
        pass
    values, vectors = np.linalg.eigh(lhs)
    keep = values > max(values.max(initial=0.0), 1.0) * 1e-10
    return (vectors[:, keep] / values[keep]) @ (vectors[:, keep].T @ gram.xy)


def squared_error(gram: Gram, beta: np.ndarray) -> np.ndarray:
    """(m,) sum of squared residuals of coefficients `beta` over the rows of `gram`."""
    return gram.yy - 2 * (beta * gram.xy).sum(0) + (beta * (gram.xx @ beta)).sum(0)


def ridge_penalty(features: Features, strength: float, rows: int) -> np.ndarray:
    """The per-column penalty: `strength` per row on the representation, none on Mincer."""
    return features.extra_columns * (strength * rows)


def predict(
    matrix: Matrix, index: np.ndarray, beta: np.ndarray, chunk: int = CHUNK_ROWS
) -> np.ndarray:
    """(len(index), m) fitted values of `beta` on the rows `index`."""
    out = np.empty((len(index), beta.shape[1]))
    for start in range(0, len(index), chunk):
        part = index[start : start + chunk]
        out[start : start + len(part)] = matrix(part) @ beta
    return out
