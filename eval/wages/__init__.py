"""Wage models from a model package and a dataset with log wages: the wage table and the wage gap.

    wage_models(package_url, data_url, table=..., gap=...)   both from one read of the dataset
    run_payload(package_url, data_url, gap_by=...)           `career run`'s wages.json

    wage_table(loaded, data_url, ...)   Mincer vs Mincer + the history representation: R^2 and
                                        MSE on the test people with person-bootstrap intervals
    wage_gap(loaded, data_url, by=...)  a group gap raw, with Mincer controls (OLS) and given the
                                        whole history (cross-fitted partially linear model)

`features` reads the person-years and the representation, `design` builds the Mincer terms,
`linear` fits least squares and ridge from Gram matrices. Both results are JSON-ready dicts
(their layouts are in the functions' docstrings). Import as `from eval.wages import wage_table`.
"""

from eval.wages.gap import wage_gap
from eval.wages.run import run_payload, wage_models
from eval.wages.table import wage_table

__all__ = ["run_payload", "wage_gap", "wage_models", "wage_table"]
