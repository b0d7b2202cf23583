"""Scoring, metrics, comparison tables and prediction, from model packages (no DeepSpeed).

`scores` turns a package and a dataset split into per-token scores; `metrics` and `table` are
functions of scores files only; `predict` ranks next jobs for a history. Import as
`from eval import metrics`, never `import eval`.
"""
