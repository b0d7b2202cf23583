"""Scaling-law fits for a study of model sizes x corpus sizes.

The parametric law is Hoffmann et al. 2022 ("Chinchilla"), equation 2:

    L(N, D) = E + A / N^alpha + B / D^beta

with N the (non-embedding) parameters, D the training tokens (here unique job-years) and E the
irreducible loss. It is fitted as their "approach 3": in log space, with a Huber loss (robust to
the odd diverged or under-trained run), by L-BFGS-B from a grid of starting points, keeping the
best. The objective is the SUM of the Huber terms over the points, not their mean: Besiroglu et
al. 2024 ("Chinchilla scaling: a replication attempt") traced Hoffmann's implausibly narrow
intervals to an optimiser stopped early on a mean, whose gradients are smaller by the number of
points. The single-variable fits follow Kaplan et al. 2020 (L = (x_c / x)^a, a line in log-log).

Fitting 5400 starts one `minimize` call at a time takes minutes (measured: ~30 ms each), and
one L-BFGS-B run over all starts stacked (the objective is separable) converged badly: one line
search for 27,000 coordinates. So every start is first descended at once by a batched BFGS in
numpy (`_descend`: a 5 x 5 inverse Hessian and a line search per start), and the few best
distinct end points are then polished by scipy's L-BFGS-B with the analytic gradient: the
reported optimum and its convergence flag are those of an ordinary single-start fit. A bootstrap
resample is the same points with integer weights, so all replicates are descended together too.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import minimize

# Hoffmann et al. 2022, appendix D.2: the grid of initialisations.
GRID_ALPHA = (0.0, 0.5, 1.0, 1.5, 2.0)
GRID_BETA = (0.0, 0.5, 1.0, 1.5, 2.0)
GRID_E = (-1.0, -0.5, 0.0, 0.5, 1.0, 1.5)
GRID_A = (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)
GRID_B = (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)

PARAMETERS = ("E", "A", "B", "alpha", "beta")
# The optimiser's coordinates: theta = (a, b, e, alpha, beta), A = exp(a), B = exp(b), E = exp(e).
# The exponents are kept >= 0: a loss that grows with N or D is overfitting, not a scaling law,
# and a negative exponent would make the compute-optimal allocation meaningless.
BOUNDS = [(None, None), (None, None), (None, None), (0.0, None), (0.0, None)]
MIN_POINTS = 5
POLISH = 4  # distinct best end points of the batched descent polished by L-BFGS-B
BOOTSTRAP_GRID_STARTS = 8  # grid starts added to the full fit's optimum in each bootstrap refit
# Converged: L-BFGS-B says so, or its projected gradient (of objective / delta) is this small: a
# polish started at an optimum already reached ends on an "ABNORMAL" line search, not a success.
STATIONARY = 1e-5


def grid_starts() -> np.ndarray:
    """Hoffmann's 6 x 6 x 6 x 5 x 5 = 5400 starting points, rows of (a, b, e, alpha, beta)."""
    rows = itertools.product(GRID_A, GRID_B, GRID_E, GRID_ALPHA, GRID_BETA)
    return np.array(list(rows), dtype=float)


@dataclass
class LawFit:
    """L(N, D) = E + A / N^alpha + B / D^beta, as fitted by `fit_law`."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    objective: float  # the summed Huber loss at the optimum (log-loss residuals)
    converged: bool  # the best start's L-BFGS-B polish succeeded or ended at a stationary point
    starts: int  # starting points tried
    points: int = 0
    delta: float = 1e-3

    @property
    def theta(self) -> np.ndarray:
        """The optimiser's coordinates (a, b, e, alpha, beta): a row for `fit_law(starts=...)`."""
        return np.array(
            [math.log(self.A), math.log(self.B), math.log(self.E), self.alpha, self.beta]
        )

    def predict(self, n: Any, d: Any) -> np.ndarray:
        """The fitted loss (nats) at parameters n and tokens d (broadcast against each other)."""
        n, d = np.asarray(n, dtype=float), np.asarray(d, dtype=float)
        return self.E + self.A / n**self.alpha + self.B / d**self.beta

    def to_dict(self) -> dict[str, Any]:
        return {k: (float(v) if isinstance(v, float) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, law: dict[str, Any]) -> LawFit:
        """Back from `to_dict` (or fit_study's "law"); keys it does not know are ignored."""
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in law.items() if k in names})


@contextlib.contextmanager
def _one_blas_thread() -> Iterator[None]:
    """BLAS held to one thread while fitting (threadpoolctl): L-BFGS-B calls BLAS on 5-vectors
    thousands of times, and OpenBLAS worker threads woken for each call made a fit ~100x slower
    on a busy 2-core machine (measured)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _objective(
    theta: np.ndarray,
    logn: np.ndarray,
    logd: np.ndarray,
    logl: np.ndarray,
    weights: np.ndarray,
    delta: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-start summed Huber loss (S,) and its gradient (S, 5), for theta (S, 5).

    r = LSE(a - alpha log N, b - beta log D, e) - log L per point; Huber_delta(r) is r^2 / 2
    within delta and delta (|r| - delta / 2) beyond (Hoffmann's form), whose derivative is r
    clipped to [-delta, delta]. weights (P,) or (S, P) counts each point: a bootstrap resample
    is integer weights."""
    a, b, e, alpha, beta = (theta[:, k : k + 1] for k in range(5))  # each (S, 1)
    u1 = a - alpha * logn  # (S, P)
    u2 = b - beta * logd
    top = np.maximum(np.maximum(u1, u2), e)
    x1, x2, x3 = np.exp(u1 - top), np.exp(u2 - top), np.exp(e - top)
    total = x1 + x2 + x3
    r = top + np.log(total) - logl
    slope = np.clip(r, -delta, delta)
    f = (weights * slope * (r - 0.5 * slope)).sum(axis=1)
    ws = weights * slope / total  # d lse / d u_k = x_k / total
    w1, w2 = ws * x1, ws * x2
    g = np.column_stack(
        [
            w1.sum(axis=1),
            w2.sum(axis=1),
            (ws * x3).sum(axis=1),
            -(w1 * logn).sum(axis=1),
            -(w2 * logd).sum(axis=1),
        ]
    )
    return f, g


def _descend(
    theta0: np.ndarray,
    data: tuple[np.ndarray, ...],
    weights: np.ndarray,
    delta: float,
    *,
    iterations: int = 400,
    gtol: float = 1e-5,
) -> tuple[np.ndarray, np.ndarray]:
    """Every start descended at once: a batched BFGS (one 5 x 5 inverse Hessian per start) with
    its own Armijo backtracking line search and projection onto the bounds; only numpy array
    arithmetic, so thousands of starts cost about as much as a few single-start scipy runs.

    The objective is scaled by 1/delta (the linear Huber regime has unit slope). A start stops
    when its projected gradient is below `gtol`, or when its line search fails even along the
    steepest descent, or after `iterations`. Returns the end points (S, 5) and their summed
    Huber objectives (S,)."""
    count = theta0.shape[0]
    weights = np.broadcast_to(weights, (count, data[0].size))
    x = _project(np.array(theta0, dtype=float))
    f, g = _objective(x, *data, weights, delta)
    f, g = f / delta, g / delta
    eye = np.eye(5)
    h = np.tile(eye, (count, 1, 1))
    fresh = np.ones(count, dtype=bool)  # no BFGS update yet: scale H before the first
    active = _projected_norm(x, g) > gtol
    for _ in range(iterations):
        idx = np.flatnonzero(active)
        if not idx.size:
            break
        xi, fi, gi, hi, wi = x[idx], f[idx], g[idx], h[idx], weights[idx]
        p = -np.einsum("sij,sj->si", hi, gi)
        p = _feasible_direction(xi, p)
        uphill = (p * gi).sum(axis=1) >= 0
        if uphill.any():  # H lost positive definiteness: restart from steepest descent
            hi[uphill] = eye
            p[uphill] = _feasible_direction(xi[uphill], -gi[uphill])
        # First step of a (re)started start at most unit length, as L-BFGS-B's: a raw gradient
        # step can throw an exponent far into a flat region where its term vanishes.
        length = np.linalg.norm(p, axis=1)
        step = np.where(fresh[idx], np.minimum(1.0, 1.0 / np.maximum(length, 1e-300)), 1.0)
        xn, fn, gn = xi.copy(), fi.copy(), gi.copy()
        done = np.zeros(idx.size, dtype=bool)
        pending = np.arange(idx.size)
        for _ in range(60):
            xt = _project(xi[pending] + step[pending, None] * p[pending])
            with np.errstate(over="ignore", invalid="ignore"):  # a step too far: not finite
                ft, gt = _objective(xt, *data, wi[pending], delta)
            ft, gt = ft / delta, gt / delta
            armijo = fi[pending] + 1e-4 * (gi[pending] * (xt - xi[pending])).sum(axis=1)
            ok = np.isfinite(ft) & (ft <= armijo)
            accepted = pending[ok]
            xn[accepted], fn[accepted], gn[accepted] = xt[ok], ft[ok], gt[ok]
            done[accepted] = True
            pending = pending[~ok]
            if not pending.size:
                break
            step[pending] *= 0.5
        s, y = xn - xi, gn - gi
        sy = (s * y).sum(axis=1)
        update = done & (sy > 1e-12 * np.linalg.norm(s, axis=1) * np.linalg.norm(y, axis=1))
        first = update & fresh[idx]
        hi[first] = eye * (sy[first] / (y[first] ** 2).sum(axis=1))[:, None, None]
        if update.any():  # H+ = H - rho (s Hy' + Hy s') + (rho^2 y'Hy + rho) s s'
            su, yu, hu = s[update], y[update], hi[update]
            rho = 1.0 / sy[update]
            hy = np.einsum("sij,sj->si", hu, yu)
            with np.errstate(over="ignore", invalid="ignore"):
                scale = rho**2 * (yu * hy).sum(axis=1) + rho
                hu = (
                    hu
                    - rho[:, None, None]
                    * (su[:, :, None] * hy[:, None, :] + hy[:, :, None] * su[:, None, :])
                    + scale[:, None, None] * su[:, :, None] * su[:, None, :]
                )
            hu[~np.isfinite(hu).all(axis=(1, 2))] = eye  # an overflowing update: start afresh
            hi[update] = hu
        # A failed line search restarts from steepest descent; failing again, the start stops.
        stuck = ~done & fresh[idx]
        restart = ~done & ~fresh[idx]
        hi[restart] = eye
        fresh[idx[update]] = False
        fresh[idx[restart]] = True
        x[idx], f[idx], g[idx], h[idx] = xn, fn, gn, hi
        active[idx] = ~stuck & (_projected_norm(xn, gn) > gtol)
    return x, f * delta


def _project(theta: np.ndarray) -> np.ndarray:
    """Onto the bounds: exponents >= 0."""
    theta[:, 3:] = np.maximum(theta[:, 3:], 0.0)
    return theta


def _feasible_direction(theta: np.ndarray, p: np.ndarray) -> np.ndarray:
    """The direction without the components that push an exponent at 0 below it."""
    p = p.copy()
    blocked = (theta[:, 3:] <= 0.0) & (p[:, 3:] < 0.0)
    p[:, 3:][blocked] = 0.0
    return p


def _projected_norm(theta: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Largest component of the projected gradient (0 where a bound holds a coordinate)."""
    g = g.copy()
    g[:, 3:][(theta[:, 3:] <= 0.0) & (g[:, 3:] > 0.0)] = 0.0
    return np.abs(g).max(axis=1)


def _single(theta0: np.ndarray, data: tuple[np.ndarray, ...], weights: np.ndarray, delta: float):
    """An ordinary single-start L-BFGS-B fit (the polish), with the analytic gradient."""

    def fun(x: np.ndarray) -> tuple[float, np.ndarray]:
        f, g = _objective(x[None, :], *data, weights, delta)
        return float(f[0]) / delta, g[0] / delta

    return minimize(
        fun,
        theta0,
        jac=True,
        method="L-BFGS-B",
        bounds=BOUNDS,
        options={"maxiter": 2000, "ftol": 1e-13, "gtol": 1e-8},
    )


def _distinct_best(theta: np.ndarray, f: np.ndarray, count: int) -> np.ndarray:
    """Indices of the `count` lowest objectives whose end points differ (rounded)."""
    order = np.argsort(f, kind="stable")
    _, first = np.unique(np.round(theta[order], 4), axis=0, return_index=True)
    return order[np.sort(first)][:count]


def _validate(n: Any, d: Any, loss: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n, d, loss = (np.asarray(v, dtype=float).ravel() for v in (n, d, loss))
    if not n.size == d.size == loss.size:
        raise ValueError(f"n, d and loss differ in length: {n.size}, {d.size}, {loss.size}")
    for name, v in (("n", n), ("d", d), ("loss", loss)):
        if not np.all(np.isfinite(v) & (v > 0)):
            raise ValueError(f"{name} must be finite and positive (the fit is in log space)")
    return n, d, loss


def _determined(index: np.ndarray, n: np.ndarray, d: np.ndarray) -> bool:
    """Whether a resample (indices into the points) has 5 distinct points, 2 distinct N and D."""
    index = np.unique(index)
    return (
        index.size >= MIN_POINTS and np.unique(n[index]).size >= 2 and np.unique(d[index]).size >= 2
    )


def _check_determined(n: np.ndarray, d: np.ndarray) -> None:
    distinct_n, distinct_d = np.unique(n).size, np.unique(d).size
    if n.size < MIN_POINTS or distinct_n < 2 or distinct_d < 2:
        raise ValueError(
            f"the law L = E + A/N^alpha + B/D^beta needs at least {MIN_POINTS} points with at "
            f"least 2 distinct N and 2 distinct D; got {n.size} points, {distinct_n} distinct N, "
            f"{distinct_d} distinct D"
        )


def _polish(
    theta0: np.ndarray, data: tuple[np.ndarray, ...], weights: np.ndarray, delta: float
) -> tuple[np.ndarray, float, bool]:
    """(theta, summed Huber objective, converged) of an L-BFGS-B run from theta0."""
    result = _single(theta0, data, weights, delta)
    _, gradient = _objective(result.x[None, :], *data, weights, delta)
    stationary = _projected_norm(result.x[None, :], gradient / delta)[0] <= STATIONARY
    return result.x, float(result.fun) * delta, bool(result.success or stationary)


def _fit(
    data: tuple[np.ndarray, ...],
    weights: np.ndarray,
    starts: np.ndarray,
    delta: float,
    polish: int = POLISH,
) -> list[tuple[np.ndarray, float, bool]]:
    """The best (theta, summed Huber objective, converged) from `starts`, for each row of
    weights (R, P): every start of every row descended at once, then the `polish` best distinct
    end points of each row refined by L-BFGS-B."""
    rows, k = weights.shape[0], starts.shape[0]
    ends, f = _descend(np.tile(starts, (rows, 1)), data, np.repeat(weights, k, axis=0), delta)
    out = []
    for r in range(rows):
        row = slice(r * k, (r + 1) * k)
        fits = [
            _polish(ends[row][i], data, weights[r], delta)
            for i in _distinct_best(ends[row], f[row], polish)
        ]
        out.append(min(fits, key=lambda fit: fit[1]))
    return out


def fit_law(n: Any, d: Any, loss: Any, *, delta: float = 1e-3, starts: Any = None) -> LawFit:
    """Fit L(N, D) = E + A/N^alpha + B/D^beta by Hoffmann et al.'s approach 3.

    Minimises sum_i Huber_delta(LSE(a - alpha log N_i, b - beta log D_i, e) - log L_i) (the SUM:
    Besiroglu et al. 2024) from `starts` (rows of (a, b, e, alpha, beta); default Hoffmann's
    5400-point `grid_starts()`), keeping the best: all starts descended at once (`_descend`),
    then the 4 best distinct end points polished by L-BFGS-B with the analytic gradient.
    Exponents are bounded below by 0.

    Raises ValueError for fewer than 5 points, fewer than 2 distinct N or D, or values that are
    not finite and positive."""
    n, d, loss = _validate(n, d, loss)
    _check_determined(n, d)
    if not delta > 0:
        raise ValueError(f"delta must be positive, got {delta}")
    starts = grid_starts() if starts is None else np.atleast_2d(np.asarray(starts, dtype=float))
    if starts.ndim != 2 or starts.shape[1] != 5 or not starts.shape[0]:
        raise ValueError(f"starts must be rows of (a, b, e, alpha, beta); got {starts.shape}")
    starts = np.column_stack([starts[:, :3], np.maximum(starts[:, 3:], 0.0)])
    data = (np.log(n), np.log(d), np.log(loss))
    with _one_blas_thread():
        [(theta, objective, converged)] = _fit(data, np.ones((1, n.size)), starts, delta)
    a, b, e, alpha, beta = (float(v) for v in theta)
    return LawFit(
        E=math.exp(e),
        A=math.exp(a),
        B=math.exp(b),
        alpha=alpha,
        beta=beta,
        objective=objective,
        converged=converged,
        starts=int(starts.shape[0]),
        points=int(n.size),
        delta=delta,
    )


def _interval(value: float, samples: np.ndarray) -> dict[str, float | None]:
    if not samples.size:
        return {"value": value, "low": None, "high": None}
    low, high = np.percentile(samples, [2.5, 97.5])
    return {"value": value, "low": float(low), "high": float(high)}


def bootstrap_law(
    n: Any,
    d: Any,
    loss: Any,
    *,
    replicates: int = 200,
    seed: int = 0,
    fit: LawFit | None = None,
) -> dict[str, Any]:
    """Percentile 95% intervals of E, A, B, alpha and beta, from refits of resampled points.

    Each replicate draws the points with replacement (numpy Generator seeded by `seed`) and is
    refitted from the full fit's optimum plus the few grid starts best on the full data: far
    cheaper than the whole grid, and a resample's optimum lies near the full data's. Resamples
    with fewer than 5 distinct points, or fewer than 2 distinct N or D, cannot determine the law
    and are skipped (counted under "skipped"). "value" is the full fit's estimate.

    Returns {"E": {"value", "low", "high"}, ..., "replicates": refits used, "skipped": n}."""
    n, d, loss = _validate(n, d, loss)
    _check_determined(n, d)
    fit = fit or fit_law(n, d, loss)
    data = (np.log(n), np.log(d), np.log(loss))
    grid = grid_starts()
    f0, _ = _objective(grid, *data, np.ones(n.size), fit.delta)
    starts = np.vstack([fit.theta[None, :], grid[np.argsort(f0)[:BOOTSTRAP_GRID_STARTS]]])
    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, n.size, n.size) for _ in range(replicates)]
    kept = [i for i in draws if _determined(i, n, d)]
    weights = np.array([np.bincount(i, minlength=n.size) for i in kept], dtype=float)
    fits = []
    if kept:
        with _one_blas_thread():
            fits = _fit(data, weights, starts, fit.delta, polish=1)
    samples = [
        (math.exp(e), math.exp(a), math.exp(b), alpha, beta)
        for (a, b, e, alpha, beta), _, _ in fits
    ]
    skipped = replicates - len(kept)
    table = np.array(samples, dtype=float).reshape(-1, 5)
    out: dict[str, Any] = {
        name: _interval(float(getattr(fit, name)), table[:, k]) for k, name in enumerate(PARAMETERS)
    }
    out["replicates"] = len(samples)
    out["skipped"] = skipped
    return out


def power_law(x: Any, loss: Any, *, replicates: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Kaplan et al. 2020's single-variable law L = (x_c / x)^exponent, fitted as the least-
    squares line log L = exponent (log x_c - log x).

    Returns {"x_c", "exponent", "r2", "points", "exponent_interval", "note"}; the interval (a
    percentile bootstrap over points, {"low", "high", "replicates"}) needs >= 4 points, else it
    is None and "note" says so. x_c is None when the exponent is 0 or x_c
    overflows (a flat line has no scale).
    Raises ValueError for fewer than 2 distinct x or values that are not finite and positive."""
    x, _, loss = _validate(x, np.ones(np.size(x)), loss)
    if np.unique(x).size < 2:
        raise ValueError(f"a power law needs at least 2 distinct x; got {np.unique(x).size}")
    logx, logl = np.log(x), np.log(loss)
    slope, intercept = np.polyfit(logx, logl, 1)
    exponent = -float(slope)
    residual = logl - (intercept + slope * logx)
    total = float(((logl - logl.mean()) ** 2).sum())
    r2 = 1.0 - float((residual**2).sum()) / total if total > 0 else None
    with np.errstate(over="ignore", divide="ignore"):
        x_c = float(np.exp(intercept / exponent)) if exponent != 0 else None
    x_c = x_c if x_c is not None and math.isfinite(x_c) else None
    out: dict[str, Any] = {
        "x_c": x_c,
        "exponent": exponent,
        "r2": r2,
        "points": int(x.size),
        "exponent_interval": None,
        "note": None,
    }
    if x.size < 4:
        out["note"] = f"no interval on the exponent from {x.size} points (needs at least 4)"
        return out
    rng = np.random.default_rng(seed)
    index = rng.integers(0, x.size, (replicates, x.size))
    lx, ll = logx[index], logl[index]  # (R, P)
    mx, ml = lx.mean(axis=1, keepdims=True), ll.mean(axis=1, keepdims=True)
    sxx = ((lx - mx) ** 2).sum(axis=1)
    keep = sxx > 1e-12 * max(1.0, float(np.abs(logx).max()) ** 2)  # >= 2 distinct x drawn
    exponents = -((lx - mx) * (ll - ml)).sum(axis=1)[keep] / sxx[keep]
    low, high = np.percentile(exponents, [2.5, 97.5])
    out["exponent_interval"] = {
        "low": float(low),
        "high": float(high),
        "replicates": int(keep.sum()),
    }
    return out


def _optimum_exists(fit: LawFit) -> None:
    if not (fit.alpha > 0 and fit.beta > 0 and fit.A > 0 and fit.B > 0):
        raise ValueError(
            f"no compute-optimal allocation: it needs alpha, beta, A, B > 0; got alpha="
            f"{fit.alpha:.4g}, beta={fit.beta:.4g}, A={fit.A:.4g}, B={fit.B:.4g}"
        )


def compute_optimal(fit: LawFit, flops: Any) -> dict[str, Any]:
    """The fitted law's optimal split of compute budgets C = 6 N D (Hoffmann et al. 2022,
    appendix D.3, closed form):

        G = (alpha A / (beta B))^(1 / (alpha + beta))
        N_opt = G (C/6)^(beta / (alpha + beta)),  D_opt = (C/6)^(alpha / (alpha + beta)) / G

    D counts training tokens, so with the law fitted on unique tokens this is the optimum when
    each token is seen once. Returns lists "flops", "n_opt", "d_opt", "loss" and the exponents
    "n_exponent" = beta/(alpha+beta), "d_exponent" = alpha/(alpha+beta) and "G".
    Raises ValueError when the law has no optimum (an exponent or coefficient not positive)."""
    _optimum_exists(fit)
    c = np.atleast_1d(np.asarray(flops, dtype=float))
    s = fit.alpha + fit.beta
    g = (fit.alpha * fit.A / (fit.beta * fit.B)) ** (1.0 / s)
    n_opt = g * (c / 6.0) ** (fit.beta / s)
    d_opt = (c / 6.0) ** (fit.alpha / s) / g
    return {
        "flops": c.tolist(),
        "n_opt": n_opt.tolist(),
        "d_opt": d_opt.tolist(),
        "loss": fit.predict(n_opt, d_opt).tolist(),
        "n_exponent": fit.beta / s,
        "d_exponent": fit.alpha / s,
        "G": g,
    }


def iso_flop(fit: LawFit, flops: Any, n_grid: Any) -> np.ndarray:
    """The fitted loss along N at each fixed budget C (D = C / (6 N)): shape (len(flops),
    len(n_grid)), row i for flops[i] (Hoffmann et al.'s approach 2 profiles, from the law)."""
    c = np.atleast_1d(np.asarray(flops, dtype=float))[:, None]
    n = np.atleast_1d(np.asarray(n_grid, dtype=float))[None, :]
    return fit.predict(n, c / (6.0 * n))


def _usable(points: pd.DataFrame, columns: Sequence[str], notes: list[str]) -> pd.DataFrame:
    missing = [c for c in columns if c not in points.columns]
    if missing:
        notes.append(f"no points: the table lacks column(s) {', '.join(missing)}")
        return points.iloc[0:0]
    values = points[list(columns)].apply(pd.to_numeric, errors="coerce")
    keep = (np.isfinite(values) & (values > 0)).all(axis=1)
    if (~keep).sum():
        notes.append(
            f"{int((~keep).sum())} row(s) without finite positive {', '.join(columns)} left out"
        )
    return points.loc[keep]


def _power_law_at(
    rows: pd.DataFrame,
    x_column: str,
    loss_column: str,
    fixed: dict[str, Any],
    what: str,
    notes: list[str],
) -> dict[str, Any] | None:
    try:
        law = power_law(rows[x_column], rows[loss_column])
    except ValueError as error:
        notes.append(f"no power law in {what}: {error}")
        return None
    law["fixed"] = fixed
    return law


def fit_study(
    points: pd.DataFrame,
    *,
    n_column: str = "non_embedding_parameters",
    d_column: str = "unique_tokens",
    loss_column: str = "best_valid_loss",
    floor: float | None = None,
    replicates: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    """The study's scaling laws as a JSON-ready dict.

    Keys: "law" (the `fit_law` fit with its bootstrap under "intervals", or None with a note),
    "power_law_n" (Kaplan's law in N over the largest corpus: rows whose "people" is its max),
    "power_law_d" (in D over the largest model), "compute_optimal" (budgets from the points'
    smallest "flops" to 100x their largest), "floor" (the oracle floor given, nats),
    "E_minus_floor", "floor_in_E_interval", "points" (rows used), "columns" and "notes".
    Never raises for too few points: what cannot be fitted is None, with a note saying why."""
    notes: list[str] = []
    rows = _usable(points, [n_column, d_column, loss_column], notes)
    out: dict[str, Any] = {
        "law": None,
        "power_law_n": None,
        "power_law_d": None,
        "compute_optimal": None,
        "floor": None if floor is None else float(floor),
        "E_minus_floor": None,
        "floor_in_E_interval": None,
        "points": int(len(rows)),
        "columns": {"n": n_column, "d": d_column, "loss": loss_column},
        "notes": notes,
    }
    if not len(rows):
        if not notes or not notes[-1].startswith("no points"):
            notes.append("no points: nothing to fit")
        return out
    n, d, loss = (rows[c].to_numpy(dtype=float) for c in (n_column, d_column, loss_column))

    corpus = "people" if "people" in rows.columns else d_column
    largest = rows[rows[corpus] == rows[corpus].max()]
    out["power_law_n"] = _power_law_at(
        largest,
        n_column,
        loss_column,
        {corpus: _scalar(rows[corpus].max()), d_column: float(largest[d_column].max())},
        "N (largest corpus)",
        notes,
    )
    biggest = rows[rows[n_column] == rows[n_column].max()]
    out["power_law_d"] = _power_law_at(
        biggest,
        d_column,
        loss_column,
        {n_column: float(rows[n_column].max())},
        "D (largest model)",
        notes,
    )

    try:
        fit = fit_law(n, d, loss)
    except ValueError as error:
        notes.append(f"no law fitted: {error}")
        return out
    if len(rows) < 10:
        notes.append(f"5 parameters from {len(rows)} points: the fit is barely determined")
    if not fit.converged:
        notes.append("the best start's L-BFGS-B run did not report convergence")
    for name in ("alpha", "beta"):
        if getattr(fit, name) <= 1e-6:
            notes.append(
                f"{name} is at its bound 0: the loss does not fall with "
                f"{'N' if name == 'alpha' else 'D'} in these points"
            )
    intervals = bootstrap_law(n, d, loss, replicates=replicates, seed=seed, fit=fit)
    if intervals["skipped"]:
        notes.append(
            f"bootstrap: {intervals['skipped']} of {replicates} resamples skipped (fewer "
            "than 5 distinct points or 2 distinct N or D)"
        )
    predicted = fit.predict(n, d)
    out["law"] = {
        **fit.to_dict(),
        "intervals": intervals,
        "log_residual_rms": float(np.sqrt(np.mean(np.log(loss / predicted) ** 2))),
    }

    flops = _positive(rows["flops"]) if "flops" in rows.columns else np.array([])
    if flops.size:
        budgets = np.geomspace(flops.min(), 100.0 * flops.max(), 25)
        try:
            out["compute_optimal"] = compute_optimal(fit, budgets)
        except ValueError as error:
            notes.append(str(error))
    else:
        notes.append('no compute-optimal allocation: the points have no positive "flops"')

    if floor is not None:
        out["E_minus_floor"] = fit.E - float(floor)
        low, high = intervals["E"]["low"], intervals["E"]["high"]
        if low is not None:
            out["floor_in_E_interval"] = bool(low <= floor <= high)
        if floor > fit.E:
            notes.append(
                f"E = {fit.E:.4g} lies below the oracle floor {floor:.4g} nats: the law "
                "extrapolates below what any model can reach"
            )
    return out


def _positive(column: pd.Series) -> np.ndarray:
    """A column's finite positive values, as floats."""
    values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=float)
    return values[np.isfinite(values) & (values > 0)]


def _scalar(value: Any) -> Any:
    """A JSON-ready scalar from a pandas/numpy one."""
    return value.item() if hasattr(value, "item") else value
