"""Scoring, metrics, comparison tables, prediction and the run report, from model packages and
scores files (no DeepSpeed).

`scores` turns a package and a dataset split into per-token scores (and, in the same pass, the
`transitions` aggregate); `metrics` and `comparison_table` are functions of scores files only;
`predict` ranks next jobs for a history; `report` renders a run's report from its metrics and
evaluation. The use cases the commands (`cluster/*_job.py`) and `career run` call, from package
and dataset URLs, return results and print nothing: `evaluate.evaluate_models`,
`forecast.run.forecast_models`, `wages.wage_models` / `wages.run_payload`,
`explain.explain_history` / `explain_files.explain_file` / `explain.rationales_payload`,
`predict.predict_history` / `predict.predict_file`.
Import as `from eval import metrics`, never `import eval`.
"""
