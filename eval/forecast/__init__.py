"""Forecasting careers past a cutoff: Monte Carlo paths sampled from a model (`sample`).

Import as `from eval.forecast import sample`.
"""
