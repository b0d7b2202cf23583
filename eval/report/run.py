"""A run folder read back for the report: what exists, and a note for everything that does not.

The layout is `eval.run_layout`'s (the one `career run` writes), read through
`data_shards.storage` from a local folder or any fsspec URL.

A run still in progress has only some of its files: each absent or unreadable file becomes a
note (`Run.missing`, `Survey.missing`), never an error. Only a folder that holds none of
experiment.json, datasets/, pretrain/ and surveys/ is refused: it is not a run folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from data_shards import storage
from data_shards.errors import StructuralError
from eval.run_layout import (
    DOWNSTREAM,
    EVALUATION,
    EXPERIMENT,
    MANIFEST,
    METRICS,
    MODELS,
    STEP_FOLDERS,
    STEPS,
)


@dataclass
class Survey:
    name: str
    models: dict[str, dict[str, Any]]  # model -> its metrics.json, in MODELS order, then others
    evaluation: dict[str, Any] | None  # the evaluation's metrics.json
    transitions: dict[str, dict[str, dict[str, Any]]]  # dataset -> model -> aggregate
    missing: list[str] = field(default_factory=list)
    #: downstream step -> its result (`DOWNSTREAM`), for the steps the run has done
    downstream: dict[str, Any] = field(default_factory=dict)
    url: str = ""  # the survey's folder (plots of downstream steps are read from it)


@dataclass
class Run:
    url: str
    experiment: dict[str, Any] | None
    steps: list[dict[str, Any]] | None
    datasets: dict[str, dict[str, Any]]  # name -> manifest.json
    pretrain: dict[str, Any] | None
    surveys: list[Survey]
    missing: list[str] = field(default_factory=list)

    @property
    def every_missing(self) -> list[str]:
        return [*self.missing, *(note for s in self.surveys for note in s.missing)]


class _Reader:
    """JSON files of one run, by path relative to it; an absent or unreadable one is a note."""

    def __init__(self, url: str, storage_options) -> None:
        self.url, self.options = url, storage_options

    def json(self, relative: str, notes: list[str], what: str) -> Any:
        url = storage.join(self.url, relative)
        if not storage.exists(url, self.options):
            notes.append(f"{what}: not there yet ({relative})")
            return None
        try:
            return json.loads(storage.read_text(url, self.options))
        except (StructuralError, json.JSONDecodeError) as exc:
            notes.append(f"{what}: unreadable ({relative}: {exc})")
            return None

    def exists(self, relative: str) -> bool:
        return storage.exists(storage.join(self.url, relative), self.options)

    def folders(self, relative: str) -> list[str]:
        """Names of the sub-folders of RUN/relative, sorted ([] when it does not exist)."""
        fs, path = storage.filesystem(storage.join(self.url, relative), self.options)
        if not storage.retry(lambda: fs.isdir(path), self.url):
            return []
        entries = storage.retry(lambda: fs.ls(path, detail=True), self.url)
        names = (
            e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e["type"] == "directory"
        )
        return sorted(n for n in names if n and not n.startswith((".", "_")))


def load_run(url: str, storage_options=None) -> Run:
    """Everything of the run at `url` the report shows (see the module)."""
    shown = storage.redact(url)
    reader = _Reader(url, storage_options)
    if not storage.exists(url, storage_options):
        raise StructuralError("no such run folder", path=shown)
    top = reader.folders("")
    if not reader.exists(EXPERIMENT) and not set(STEP_FOLDERS) & set(top):
        raise StructuralError(
            "not a run folder: no experiment.json, datasets/, pretrain/ or surveys/ "
            "(the layout `career run` writes)",
            path=shown,
        )
    missing: list[str] = []
    experiment = reader.json(EXPERIMENT, missing, "the experiment")
    steps = None
    if reader.exists(STEPS):
        steps = reader.json(STEPS, missing, "step times")
    datasets = _datasets(reader, experiment or {}, missing)
    pretrain = reader.json(f"pretrain/{METRICS}", missing, "pretraining")
    named = [str(s) for s in (experiment or {}).get("surveys") or []]
    found = reader.folders("surveys")
    surveys = [_survey(reader, name) for name in [*named, *(s for s in found if s not in named)]]
    if not surveys:
        missing.append("surveys: none yet (surveys/)")
    return Run(shown, experiment, steps, datasets, pretrain, surveys, missing)


def _datasets(reader: _Reader, experiment: dict, missing: list[str]) -> dict[str, dict]:
    expected = [experiment.get("resumes"), *(experiment.get("surveys") or [])]
    names = [str(n) for n in expected if n]
    names += [n for n in reader.folders("datasets") if n not in names]
    out = {}
    for name in names:
        manifest = reader.json(f"datasets/{name}/{MANIFEST}", missing, f"dataset {name}")
        if manifest is not None:
            out[name] = manifest
    return out


def _survey(reader: _Reader, name: str) -> Survey:
    notes: list[str] = []
    base = f"surveys/{name}"
    present = reader.folders(base)
    if not present:
        return Survey(name, {}, None, {}, [f"{name}: not started ({base}/)"])
    models, untrained = {}, []
    others = [m for m in present if m not in MODELS and m != EVALUATION and m not in DOWNSTREAM]
    for model in [*MODELS, *others]:
        if not reader.exists(f"{base}/{model}/{METRICS}"):
            untrained.append(model)
            continue
        metrics = reader.json(f"{base}/{model}/{METRICS}", notes, f"{name}: {model}")
        if metrics is not None:
            models[model] = metrics
    if untrained:
        notes.append(f"{name}: not trained yet: {', '.join(untrained)} ({base}/MODEL/{METRICS})")
    evaluation = reader.json(f"{base}/{EVALUATION}/{METRICS}", notes, f"{name}: evaluation")
    transitions: dict[str, dict[str, dict]] = {}
    index = (evaluation or {}).get("transitions") or {}
    for model, per_dataset in index.items():
        for dataset, relative in per_dataset.items():
            what = f"{name}: transitions of {model} on {dataset}"
            found = reader.json(f"{base}/{EVALUATION}/{relative}", notes, what)
            if found is not None:
                transitions.setdefault(dataset, {})[model] = found
    if evaluation is not None and not index:
        notes.append(f"{name}: no transition aggregate (an evaluation from before it was added)")
    downstream = {}
    for step, last in DOWNSTREAM.items():
        if step in present:
            found = reader.json(f"{base}/{step}/{last}", notes, f"{name}: {step}")
            if found is not None:
                downstream[step] = found
    return Survey(
        name, models, evaluation, transitions, notes, downstream, storage.join(reader.url, base)
    )
