"""Scaling laws for a study of model sizes x corpus sizes.

fit.py     Hoffmann et al. 2022's L(N, D) = E + A/N^alpha + B/D^beta (approach 3: Huber in
           log space, summed, from a grid of starts), its bootstrap, Kaplan et al. 2020's
           single-variable power laws, the compute-optimal split, and `fit_study`
plots.py   the study's figures (matplotlib, Agg canvas), as PNG bytes
"""

from eval.scaling.fit import (
    LawFit,
    bootstrap_law,
    compute_optimal,
    fit_law,
    fit_study,
    grid_starts,
    iso_flop,
    power_law,
)

__all__ = [
    "LawFit",
    "bootstrap_law",
    "compute_optimal",
    "fit_law",
    "fit_study",
    "grid_starts",
    "iso_flop",
    "power_law",
]
