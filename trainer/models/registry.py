"""The model kinds: name -> config class, model class, presets, covariates, how it is fitted.

    career       the CAREER transformer (trainer/models/career.py)
    regression   the paper's two-stage multinomial logit (trainer/models/regression.py)
    bag-of-jobs  the paper's bag-of-jobs network (trainer/models/bag_of_jobs.py)
    markov       order-1 Markov chain, closed form (trainer/models/markov.py)

Every kind is a pure-PyTorch `JobModel` (trainer/models/output.py): `forward(batch)`, `log_probs`,
`token_log_probs`, `nll`, `num_parameters`, `flops_per_token`, and a `config` dataclass with
`kind`, `vocab_sizes`, `covariates` and `to_dict()`. Gradient-trained kinds go through the one
training loop (DeepSpeed); a `closed_form` kind is fitted by counting (`trainer.closed_form`).

(The registry is its own module, not the package's `__init__`: every kind imports the shared
output from this package, and the registry imports every kind.)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from data_shards import dataset
from trainer.models import bag_of_jobs, career, markov, regression
from trainer.models.output import JobModel

if TYPE_CHECKING:
    from data_shards.manifest import Manifest


@dataclass(frozen=True)
class Kind:
    name: str
    config: type  # its config dataclass
    model: type[JobModel]
    presets: dict[str, dict[str, Any]]  # architecture presets (vocab sizes come from the data)
    covariates: tuple[str, ...]  # the covariates it can use (those the dataset has are used)
    closed_form: bool = False  # fitted by counting, without DeepSpeed
    help: str = ""

    def settings(self) -> tuple[str, ...]:
        """The config fields a `model.NAME=value` override may set."""
        return tuple(
            f.name for f in dataclasses.fields(self.config) if f.name not in ("vocab_sizes", "kind")
        )


KINDS: dict[str, Kind] = {
    kind.name: kind
    for kind in (
        Kind(
            career.KIND,
            career.ModelConfig,
            career.Career,
            career.PRESETS,
            career.COVARIATES,
            help="the CAREER transformer",
        ),
        Kind(
            regression.KIND,
            regression.RegressionConfig,
            regression.Regression,
            regression.PRESETS,
            regression.COVARIATES,
            help="the paper's two-stage multinomial logit (L2: optim.weight_decay)",
        ),
        Kind(
            bag_of_jobs.KIND,
            bag_of_jobs.BagOfJobsConfig,
            bag_of_jobs.BagOfJobs,
            bag_of_jobs.PRESETS,
            career.COVARIATES,
            help="last job + mean of earlier jobs + covariates, one hidden layer",
        ),
        Kind(
            markov.KIND,
            markov.MarkovConfig,
            markov.Markov,
            markov.PRESETS,
            (),
            closed_form=True,
            help="order-1 Markov chain, closed form, alpha chosen on valid",
        ),
    )
}
DEFAULT_KIND = career.KIND
#: Every preset name of any kind (each kind refuses the names it does not have).
PRESET_NAMES = tuple(sorted({name for kind in KINDS.values() for name in kind.presets}))


def get_kind(name: str) -> Kind:
    if name not in KINDS:
        raise ValueError(f"unknown model kind {name!r}; choose from {', '.join(KINDS)}")
    return KINDS[name]


def covariates_of(manifest: Manifest, kind: str | None = None) -> tuple[str, ...]:
    """The covariates a model embeds on this dataset: those of the model's (of `kind`'s, else
    CAREER's) that it has."""
    return dataset.covariates_of(manifest, get_kind(kind or DEFAULT_KIND).covariates)


def check_preset(kind: str, preset: str) -> None:
    presets = get_kind(kind).presets
    if preset not in presets:
        raise ValueError(
            f"model kind {kind} has no preset {preset!r}; choose from {', '.join(presets)}"
        )


def check_settings(kind: str, overrides: dict[str, Any]) -> None:
    """Refuse `model.NAME` overrides the kind's config does not have."""
    known = get_kind(kind).settings()
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise ValueError(
            f"unknown model setting {', '.join('model.' + n for n in unknown)} for kind {kind} "
            f"(its settings: {', '.join(known)})"
        )


def config_from_dict(payload: dict[str, Any]) -> Any:
    """A kind's config from its `to_dict()` (a package's or checkpoint's); no `kind`: career."""
    kind = get_kind(payload.get("kind", DEFAULT_KIND))
    values = dict(payload)
    values["kind"] = kind.name
    if "covariates" in values:
        values["covariates"] = tuple(values["covariates"])
    return kind.config(**values)


def from_config(config: Any) -> JobModel:
    """A fresh model of `config`'s kind (seed the generators first for reproducible weights)."""
    return get_kind(config.kind).model(config)


def build(
    kind: str, vocab_sizes: dict[str, int], preset: str = "paper", **overrides: Any
) -> JobModel:
    """A fresh model of `kind` from a preset plus `overrides` (e.g. `covariates=...`)."""
    spec = get_kind(kind)
    check_preset(kind, preset)
    values = {**spec.presets[preset], **overrides}
    return spec.model(spec.config(vocab_sizes=dict(vocab_sizes), **values))
