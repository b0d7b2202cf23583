"""The built-in experiments of `career run --size`: demo (minutes on a laptop's CPU), small (about
two hours on 2 cores) and paper (the paper's corpus and model: 24M resumes, the `paper` preset,
85,000 updates, for a GPU cluster). Each is the mapping an experiment file would hold."""

from __future__ import annotations

import json
from typing import Any

from cluster.run.experiment import Experiment, from_dict

SIZES: dict[str, dict[str, Any]] = {
    "demo": {
        "resumes": {"name": "resumes", "simulate": "resumes", "people": 20_000},
        "surveys": [
            {"name": n, "simulate": n, "people": 2_500, "people_per_block": 128}
            for n in ("nlsy79", "nlsy97", "psid")
        ],
        "pretrain": {
            "preset": "small",
            "updates": 150,
            "tokens_per_update": 8000,
            "lr": 1e-3,
            "eval_every": 50,
        },
        "finetune": {
            "preset": "small",
            "updates": 60,
            "tokens_per_update": 4000,
            "lr": 1e-3,
            "eval_every": 20,
            "patience": 2,
        },
        "baselines": {
            "scratch": {},
            "regression": {"preset": "paper", "lr": 0.05},
            "bag-of-jobs": {"preset": "small"},
            "markov": {},
        },
        "workers": 2,
        "survey_workers": 1,
        "survey_worker_cpus": 0.5,
        "forecast": {"cutoff": 2014, "paths": 1000},
        "wages": {"gap": "gender"},
        "explain": {"people": 3, "changes": {"updates": 40}},
    },
    "small": {
        "resumes": {"name": "resumes", "simulate": "resumes", "people": 200_000},
        "surveys": [{"name": n, "simulate": n} for n in ("nlsy79", "nlsy97", "psid")],
        "pretrain": {
            "preset": "small",
            "updates": 800,
            "tokens_per_update": 16_000,
            "lr": 1e-3,
            "eval_every": 100,
        },
        "finetune": {
            "preset": "small",
            "updates": 600,
            "tokens_per_update": 4000,
            "lr": 1e-3,
            "eval_every": 25,
            "patience": 4,
        },
        "baselines": {
            "scratch": {},
            "regression": {"preset": "paper", "lr": 0.05, "weight_decay": 0.1},
            "bag-of-jobs": {"preset": "small"},
            "markov": {},
        },
        "workers": 2,
        "survey_workers": 2,
        "forecast": {"cutoff": 2014, "paths": 1000},
        "wages": {"gap": "gender"},
        "explain": {"people": 5},
    },
    "paper": {
        "resumes": {"name": "resumes", "simulate": "resumes", "people": 24_000_000},
        "surveys": [{"name": n, "simulate": n} for n in ("nlsy79", "nlsy97", "psid")],
        "pretrain": {
            "preset": "paper",
            "updates": 85_000,
            "tokens_per_update": 16_000,
            "lr": 5e-4,
            "eval_every": 1000,
            "zero_stage": 2,
        },
        "finetune": {
            "preset": "paper",
            "updates": 5_000,
            "tokens_per_update": 16_000,
            "lr": 1e-4,
            "eval_every": 250,
            "patience": 5,
        },
        "baselines": {
            "scratch": {"lr": 5e-4},
            "regression": {"lr": 0.05},
            "bag-of-jobs": {"lr": 5e-4},
            "markov": {},
        },
        "workers": 8,
        "survey_workers": 1,
        "gpus_per_worker": 1,
        "cpus_per_evaluation": 4,
        "forecast": {"cutoff": 2014, "paths": 1000},
        "wages": {"gap": "gender"},
        "explain": {"people": 10},
    },
}


def builtin(size: str) -> Experiment:
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose from {', '.join(SIZES)}")
    return from_dict(json.loads(json.dumps(SIZES[size])), where=f"--size {size}")
