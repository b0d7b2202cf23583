"""The log-wage gap between two groups (women and men), three ways, each with a person-clustered
standard error and a 95% interval:

    raw           mean log wage of the group minus the reference's, over person-years
    mincer_ols    the group's coefficient in least squares with the Mincer controls
                  (`eval.wages.design`: education, experience and its square, occupation, year,
                  location, ethnicity; the group's own field left out)
    history_dml   the gap given the whole job history (Vafa, Athey & Blei, "Estimating wage
                  disparities using foundation models", PNAS 2025): a partially linear model
                      log wage = theta * group + g(X) + e,   group = m(X) + v,
                  X = the Mincer controls and the history as the model reads it: its
                  representation (`eval.wages.features`, computed with the group's own
                  covariate hidden, so that X is the history, not the answer) and, when the
                  model reads the group's field, the log-likelihood ratio of the jobs through the
                  year under group vs reference (CAREER is a model of careers given covariates:
                  by Bayes' rule that ratio is the history's evidence about the group, i.e. the
                  propensity score up to the prior odds) with the propensity it implies. g and m
                  are ridge fits on X (the representation's columns penalised, the controls
                  not), cross-fitted over person folds (our own cross-fitting; each nuisance's
                  penalty chosen on a held-out fold of the training people); theta comes from
                  the partialling-out score of double machine learning (Chernozhukov et al.
                  2018), theta = sum(v_hat * u_hat) / sum(v_hat^2) with u_hat = y - g_hat(X).

All three are the same estimator, theta = sum(v u) / sum(v^2) over residuals, with different
nuisances: the mean (raw), in-sample least squares on the Mincer controls (by Frisch-Waugh-Lovell,
exactly the OLS coefficient), and cross-fitted ridge on controls plus history. The variance is
clustered by person (a person's years share an error), with the small-sample factor P/(P-1).

What history_dml means: the average difference in log wages between women and men *with the same
job history* (and the same controls); with gaps that differ across histories it is a
variance-weighted average of them. It does not measure discrimination, nor the effect of gender
on wages: careers themselves differ by gender (who leaves work, who is promoted), and the part of
the gap that runs through them is what adjusting for history removes. The simulator's `wage-gap`
preset knows the answer (its wage equation is a function of the observed history plus a gender
gap): the result carries it as `truth`, and which intervals cover it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from data_shards import storage
from data_shards.dataset import Dataset, load_dataset
from data_shards.errors import StructuralError
from data_shards.manifest import MANIFEST
from data_shards.schema import SPLITS
from data_shards.synth.presets import get_preset
from eval.metrics import LEVEL
from eval.wages.design import MincerDesign
from eval.wages.features import (
    DEFAULT_POOLING,
    DEFAULT_TOKENS_PER_BATCH,
    STATIC_FIELDS,
    PersonYears,
    check_representation,
    person_years,
)
from eval.wages.linear import (
    PENALTIES,
    Features,
    grams,
    predict,
    ridge_penalty,
    solve,
    squared_error,
)
from eval.wages.table import json_ready
from trainer.package import LoadedModel

Z_95 = 1.959963984540054
DEFAULT_FOLDS = 5
#: Default (group, reference) of a field; other fields need both named.
#: The person fields a wage gap can be measured by.
GAP_FIELDS = ("gender", "ethnicity", "location")
DEFAULT_GROUPS = {"gender": ("female", "male")}
METHOD = (
    "partially linear model, partialling-out score; own cross-fitting over person folds with "
    "ridge nuisances on the Mincer controls, the history representation (group covariate "
    "hidden) and the model's likelihood ratio of the history between the groups; "
    "person-clustered standard errors"
)


def resolve_groups(
    dataset: Dataset, by: str, group: str | None, reference: str | None
) -> tuple[int, int, str, str]:
    """Ids and names of the group and the reference in `by`'s vocabulary; refused, naming the
    manifest, when the dataset has no such field or value."""
    where = storage.redact(storage.join(dataset.url, MANIFEST))
    if by not in STATIC_FIELDS:
        raise ValueError(f"--gap takes a person field ({', '.join(STATIC_FIELDS)}), not {by!r}")
    if by not in dataset.manifest.fields["person_fields"]:
        raise StructuralError(f"the dataset has no {by} field: no {by} gap to estimate", path=where)
    default = DEFAULT_GROUPS.get(by, (None, None))
    group, reference = group or default[0], reference or default[1]
    if not group or not reference:
        raise ValueError(f"name the two {by} values to compare: --gap {by}:GROUP,REFERENCE")
    tokens = dataset.vocab.fields[by]
    for value in (group, reference):
        if value not in tokens[3:]:
            raise StructuralError(
                f"no {by} value {value!r} in the dataset (its values: {', '.join(tokens[3:])})",
                path=where,
            )
    if group == reference:
        raise ValueError(f"the group and the reference are both {group!r}")
    return tokens.index(group), tokens.index(reference), group, reference


def known_gap(dataset: Dataset, by: str, group: str, reference: str) -> float | None:
    """The true gap given history, when the data is simulated by a design that knows it."""
    described = dataset.manifest.input or {}
    if described.get("format") != "synth" or (by, group, reference) != ("gender", "female", "male"):
        return None
    try:
        preset = get_preset(str(described.get("preset")))
    except ValueError:
        return None
    return preset.wage_design.true_gap(by) if preset.wages else None


def model_contrast(
    loaded: LoadedModel, by: str, group: int, reference: int
) -> tuple[str, int, int] | None:
    """(field, group id, reference id) when the model reads `by` and knows both values (its
    likelihood ratio is then a feature of the group's nuisance), else None."""
    reads = by in getattr(loaded.model.config, "covariates", ())
    if not reads or max(group, reference) >= loaded.vocab.size(by):
        return None
    return by, group, reference


def history_features(rows: PersonYears, d: np.ndarray) -> np.ndarray:
    """The nuisances' history columns: the representation (the group's covariate hidden) and,
    when the model reads the group's field, the log-likelihood ratio of the history through the
    year and the propensity it implies with the sample's prior odds."""
    if rows.log_ratio is None:
        return rows.represent
    prior = np.log(d.mean() / (1 - d.mean()))
    propensity = 1.0 / (1.0 + np.exp(-(rows.log_ratio + prior)))
    return np.column_stack([rows.represent, rows.log_ratio, propensity]).astype(np.float32)


def partialled_out(u: np.ndarray, v: np.ndarray, person: np.ndarray) -> dict[str, float]:
    """theta = sum(v u) / sum(v^2) and its person-clustered standard error and 95% interval."""
    vv = float((v * v).sum())
    if vv <= 1e-12 * max(len(v), 1):
        raise ValueError("the group is fully predicted by the controls: no gap can be estimated")
    theta = float((v * u).sum() / vv)
    _, who = np.unique(person, return_inverse=True)
    score = np.bincount(who, weights=(u - theta * v) * v)
    people = len(score)
    se = float(np.sqrt((score**2).sum() * people / max(people - 1, 1)) / vv)
    return {"estimate": theta, "se": se, "low": theta - Z_95 * se, "high": theta + Z_95 * se}


def _person_folds(person: np.ndarray, folds: int, seed: int) -> np.ndarray:
    people, who = np.unique(person, return_inverse=True)
    order = np.random.default_rng(seed).permutation(len(people))
    fold_of = np.empty(len(people), dtype=np.int64)
    fold_of[order] = np.arange(len(people)) % folds
    return fold_of[who]


def cross_fitted(
    features: Features,
    targets: np.ndarray,
    person: np.ndarray,
    folds: int,
    penalties: tuple[float, ...],
    seed: int,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Out-of-fold residuals (N, m) of ridge fits of each target column on `features`: fold k is
    predicted from the others, with each target's penalty chosen on fold k+1 from the rest."""
    fold = _person_folds(person, folds, seed)
    parts = grams(features, targets, fold, folds, features.width)
    total = sum(parts[1:], parts[0])
    m = targets.shape[1]
    residuals = np.empty_like(targets)
    chosen: list[list[float]] = []
    for k in range(folds):
        inner = (k + 1) % folds
        fit = total - parts[k] - parts[inner]
        errors = np.array(
            [
                squared_error(parts[inner], solve(fit, ridge_penalty(features, s, fit.n)))
                for s in penalties
            ]
        )
        best = [penalties[int(i)] for i in errors.argmin(0)]
        fit = total - parts[k]
        beta = np.column_stack(
            [solve(fit, ridge_penalty(features, best[j], fit.n))[:, j] for j in range(m)]
        )
        rows = np.flatnonzero(fold == k)
        residuals[rows] = targets[rows] - predict(features, rows, beta)
        chosen.append(best)
    variance = targets.var(0)
    r2 = 1.0 - (residuals**2).mean(0) / np.where(variance > 0, variance, np.nan)
    return residuals, {"penalties": chosen, "out_of_fold_r2": [float(x) for x in r2]}


def _in_sample(features: Features, targets: np.ndarray) -> np.ndarray:
    """Residuals of least squares of each target on `features`, over every row."""
    everyone = np.zeros(len(targets), dtype=np.int64)
    (gram,) = grams(features, targets, everyone, 1, features.width)
    return targets - predict(features, np.arange(len(targets)), solve(gram))


def wage_gap(
    loaded: LoadedModel,
    data_url: str,
    by: str = "gender",
    group: str | None = None,
    reference: str | None = None,
    *,
    storage_options=None,
    splits: tuple[str, ...] = SPLITS,
    folds: int = DEFAULT_FOLDS,
    penalties: tuple[float, ...] = PENALTIES,
    seed: int = 0,
    pooling: str = DEFAULT_POOLING,
    tokens_per_batch: int = DEFAULT_TOKENS_PER_BATCH,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """The `by` gap (group minus reference) of one dataset, raw, with Mincer controls and given the
    history (see the module), as a JSON-ready dict:

        dataset       {url, manifest_sha256}
        by, group, reference, splits, folds, seed, pooling, method
        person_years  {split: counts}, plus used (rows of the two groups), people, group_people,
                      reference_people, other_group_person_years (neither group: left out)
        experience    which experience the controls use
        estimates     {raw | mincer_ols | history_dml: {estimate, se, low, high}}; history_dml
                      also {penalties: [[outcome, group] per fold], out_of_fold_r2: [outcome,
                      group], residual_group_share: the share of the group's variance the
                      history leaves unexplained (small: little overlap), likelihood_ratio:
                      whether the model's group likelihood ratio was a feature}
        truth         the true gap given history when the simulator knows it, else null
        covers_truth  {estimate name: its interval holds the truth} (with a truth only)
        level         0.95
    """
    if folds < 2:
        raise ValueError(f"cross-fitting needs at least 2 folds, not {folds}")
    dataset = load_dataset(data_url, storage_options)
    check_representation(loaded, storage.redact(data_url))
    groups = gap_groups(loaded, dataset, by, group, reference)
    rows = person_years(
        loaded,
        data_url,
        splits,
        hide=(by,),
        contrast=groups.contrast,
        storage_options=storage_options,
        pooling=pooling,
        tokens_per_batch=tokens_per_batch,
        dataset=dataset,
        on_progress=on_progress,
    )
    return gap_of(
        rows,
        dataset,
        groups,
        data_url,
        splits=splits,
        folds=folds,
        penalties=penalties,
        seed=seed,
        pooling=pooling,
    )


class GapGroups(NamedTuple):
    """The two groups of a gap, resolved in a dataset and a package (`gap_groups`)."""

    by: str
    group_id: int
    reference_id: int
    group: str
    reference: str
    contrast: tuple[str, int, int] | None  # `model_contrast`


def gap_groups(
    loaded: LoadedModel, dataset: Dataset, by: str, group: str | None, reference: str | None
) -> GapGroups:
    """`resolve_groups` and `model_contrast`: what must be known before the data is read."""
    group_id, reference_id, group, reference = resolve_groups(dataset, by, group, reference)
    contrast = model_contrast(loaded, by, group_id, reference_id)
    return GapGroups(by, group_id, reference_id, group, reference, contrast)


def gap_of(
    rows: PersonYears,
    dataset: Dataset,
    groups: GapGroups,
    data_url: str,
    *,
    splits: tuple[str, ...] = SPLITS,
    folds: int = DEFAULT_FOLDS,
    penalties: tuple[float, ...] = PENALTIES,
    seed: int = 0,
    pooling: str = DEFAULT_POOLING,
) -> dict[str, Any]:
    """`wage_gap`'s result from the person-years of `splits`, already read (`rows`: with the
    representation of the history with `groups.by` hidden, and `groups.contrast`'s ratio)."""
    by, group_id, reference_id, group, reference, _ = groups
    value = rows.static[by]
    used = (value == group_id) | (value == reference_id)
    rows = rows.take(used)
    d = (rows.static[by] == group_id).astype(np.float64)
    where = storage.redact(storage.join(dataset.url, MANIFEST))
    people_of = {
        name: len(np.unique(rows.person[d == flag])) for name, flag in ((group, 1), (reference, 0))
    }
    if min(people_of.values()) < folds:
        raise StructuralError(
            f"too few people with a wage to compare ({people_of[group]} {group}, "
            f"{people_of[reference]} {reference} in the {', '.join(splits)} splits; "
            f"cross-fitting needs at least {folds} of each)",
            path=where,
        )
    targets = np.column_stack([rows.log_wage, d])
    everyone = np.ones(len(rows), dtype=bool)
    design = MincerDesign.fit(rows, everyone, dataset.vocab, exclude=(by,))
    centred = targets - targets.mean(0)
    estimates: dict[str, dict[str, Any]] = {
        "raw": partialled_out(centred[:, 0], centred[:, 1], rows.person)
    }
    resid = _in_sample(Features(design), targets)
    estimates["mincer_ols"] = partialled_out(resid[:, 0], resid[:, 1], rows.person)
    features = Features(design, history_features(rows, d))
    resid, details = cross_fitted(features, targets, rows.person, folds, penalties, seed)
    estimates["history_dml"] = {
        **partialled_out(resid[:, 0], resid[:, 1], rows.person),
        **details,
        "residual_group_share": float((resid[:, 1] ** 2).sum() / (centred[:, 1] ** 2).sum()),
        "likelihood_ratio": rows.log_ratio is not None,
    }
    truth = known_gap(dataset, by, group, reference)
    result: dict[str, Any] = {
        "dataset": {"url": storage.redact(data_url), "manifest_sha256": dataset.manifest_sha},
        "by": by,
        "group": group,
        "reference": reference,
        "splits": list(splits),
        "folds": folds,
        "seed": seed,
        "pooling": pooling,
        "method": METHOD,
        "level": LEVEL,
        "person_years": {
            **{split: c.to_dict() for split, c in rows.counts.items()},
            "used": len(rows),
            "people": len(np.unique(rows.person)),
            "group_people": people_of[group],
            "reference_people": people_of[reference],
            "other_group_person_years": int((~used).sum()),
        },
        "experience": design.experience_kind,
        "estimates": estimates,
        "truth": truth,
    }
    if truth is not None:
        result["covers_truth"] = {
            name: bool(e["low"] <= truth <= e["high"]) for name, e in estimates.items()
        }
    return json_ready(result)
