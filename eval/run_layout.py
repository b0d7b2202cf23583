"""The folder of one `career run`: where each step writes, the file that marks it finished, and the
models trained on each survey.

`cluster` writes a run through this layout and `eval.report` reads it back through the same one,
so a step's folder or its finished-marker is named here and nowhere else:

    RUN/experiment.json                        the resolved experiment (a resumed run must match)
    RUN/steps.json                             each step's status and wall time
    RUN/datasets/NAME/manifest.json            `career shard` of the resumes and of each survey
    RUN/pretrain/metrics.json                  CAREER pretrained on the resumes
    RUN/surveys/SURVEY/MODEL/metrics.json      fine-tuned CAREER, then the baselines (`MODELS`)
    RUN/surveys/SURVEY/evaluation/metrics.json `career evaluate` of them all on the test split
    RUN/surveys/SURVEY/forecast/forecast.json  `career forecast` (models retrained on the cut
                                               dataset in forecast/models/MODEL/)
    RUN/surveys/SURVEY/wages/wages.json        the wage table and the wage gap
    RUN/surveys/SURVEY/explain/rationales.json rationales (the word-dropout model in explain/model/)
    RUN/report/                                `career report` (HTML, Markdown, plots)

A step is finished only when its marker exists: every marker is written last, atomically.
"""

from __future__ import annotations

from dataclasses import dataclass

from data_shards import storage
from data_shards.manifest import MANIFEST

#: The model fine-tuned from pretraining, and the baselines a run can train next to it, in the
#: order the tables and the report show them.
FINETUNED = "finetuned"
BASELINES = ("scratch", "regression", "bag-of-jobs", "markov")
MODELS = (FINETUNED, *BASELINES)

EXPERIMENT = "experiment.json"
STEPS = "steps.json"
#: The marker of a trained model (a run folder of `career pretrain|finetune`) and of an evaluation.
METRICS = "metrics.json"
EVALUATION = "evaluation"
#: Folders of a survey that hold downstream uses, not models, and the marker of each.
DOWNSTREAM = {"forecast": "forecast.json", "wages": "wages.json", "explain": "rationales.json"}
#: The folders of a run's steps (a folder holding none of them and no experiment.json is no run).
STEP_FOLDERS = ("datasets", "pretrain", "surveys")
PACKAGE = "package"


@dataclass(frozen=True)
class RunLayout:
    """Where each step of the run at `url` writes (see the module docstring)."""

    url: str

    def file(self, name: str) -> str:
        return storage.join(self.url, name)

    def dataset(self, name: str) -> str:
        return storage.join(self.url, "datasets", name)

    @property
    def pretrain(self) -> str:
        return storage.join(self.url, "pretrain")

    def survey(self, survey: str) -> str:
        return storage.join(self.url, "surveys", survey)

    def model(self, survey: str, model: str) -> str:
        return storage.join(self.survey(survey), model)

    def evaluation(self, survey: str) -> str:
        return storage.join(self.survey(survey), EVALUATION)

    def forecast(self, survey: str) -> str:
        return storage.join(self.survey(survey), "forecast")

    def forecast_model(self, survey: str, model: str) -> str:
        """A model trained on the survey cut at the forecasting cutoff."""
        return storage.join(self.forecast(survey), "models", model)

    def wages(self, survey: str) -> str:
        return storage.join(self.survey(survey), "wages")

    def explain(self, survey: str) -> str:
        return storage.join(self.survey(survey), "explain")

    def explain_model(self, survey: str) -> str:
        """CAREER fine-tuned with word dropout, for rationales."""
        return storage.join(self.explain(survey), "model")

    @property
    def report(self) -> str:
        return storage.join(self.url, "report")


def package_of(run_folder: str) -> str:
    """The package a training run folder exports (`career pretrain|finetune --out`)."""
    return storage.join(run_folder, PACKAGE)


def finished(folder: str, marker: str, storage_options=None) -> bool:
    """Whether the step writing `folder` ended: its marker file exists."""
    return storage.exists(storage.join(folder, marker), storage_options)


__all__ = [
    "BASELINES",
    "DOWNSTREAM",
    "EVALUATION",
    "EXPERIMENT",
    "FINETUNED",
    "MANIFEST",
    "METRICS",
    "MODELS",
    "PACKAGE",
    "STEPS",
    "STEP_FOLDERS",
    "RunLayout",
    "finished",
    "package_of",
]
