"""Scoring, metrics, comparison tables, prediction and the run report, from model packages and
scores files (no DeepSpeed).

`scores` turns a package and a dataset split into per-token scores (and, in the same pass, the
`transitions` aggregate); `metrics` and `table` are functions of scores files only; `predict`
ranks next jobs for a history; `report` renders a run's report from its metrics and evaluation.
Import as `from eval import metrics`, never `import eval`.
"""
