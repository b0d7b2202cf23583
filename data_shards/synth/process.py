"""The job process given a latent worker type: one step, for all types at once.

At each observed year a worker either keeps last year's job (probability sigmoid(stay logit), which
rises with tenure and falls with the gap since the last observation) or moves through one of seven
components: promotion up the ladder, a lateral move within the family, a switch to another family
(the type's sparse family preferences, tilted by region), re-employment from a non-employment state,
or entry into unemployment (higher in recessions, lower with education), out of the labor force
(older ages, women) or school (the young).

Everything a step depends on is observed by a model (previous job, tenure and gap computed from the
observed history, age, education, year, region, gender) except the type. So the exact predictive
probability of a job sums the type out with a forward filter over K types (generate.py): the oracle.

All functions take arrays over n people and return (K, n, ...) arrays for the K types.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data_shards.synth.presets import Preset
from data_shards.synth.world import FIRST_YEAR, REGION_UNEMPLOYMENT, World

COMPONENTS = (
    "promote",
    "lateral",
    "switch",
    "employ",
    "unemployed",
    "not_in_labor_force",
    "school",
)
PROMOTE, LATERAL, SWITCH, EMPLOY, UNEMP, NILF, SCHOOL = range(len(COMPONENTS))
NEG_INF = -np.inf


@dataclass
class StepContext:
    """What is known when predicting year t for n people (all arrays of shape (n,))."""

    prev: np.ndarray | None  # job id last observed; None at the first observed year
    tenure: np.ndarray | None  # observed years in the current spell up to the previous year
    gap: np.ndarray | None  # year_t - year_{t-1}
    year: np.ndarray
    age: np.ndarray
    education: np.ndarray  # index into EDUCATION_LEVELS, of the year being predicted
    region: np.ndarray
    female: np.ndarray  # float 0/1 (0 where gender is not recorded)


def _type_params(world: World, name: str) -> np.ndarray:
    return np.array([getattr(t, name) for t in world.types])[:, None]  # (K, 1)


def _young(age: np.ndarray, cutoff: int) -> np.ndarray:
    return (age < cutoff).astype(float)


def stay_and_move_logits(
    world: World, preset: Preset, ctx: StepContext
) -> tuple[np.ndarray | None, np.ndarray]:
    """Stay logit (K, n) (None at the first year) and move-component logits (K, n, C)."""
    K, n = world.num_types, len(ctx.year)
    rec = world.recession[ctx.year - FIRST_YEAR]
    e = ctx.education.astype(float)
    age = ctx.age.astype(float)
    old = np.maximum(age - 55, 0)
    logits = np.full((K, n, len(COMPONENTS)), NEG_INF)
    unemp_base = (
        _type_params(world, "unemployment") + 1.3 * rec + REGION_UNEMPLOYMENT[ctx.region] - 0.3 * e
    )
    nilf_base = _type_params(world, "out_of_labor_force") + 0.15 * old + 0.6 * ctx.female
    school_base = (
        _type_params(world, "school")
        + 3.0 * _young(age, 19)
        + 1.5 * _young(age, 23)
        - 0.25 * np.maximum(age - 23, 0)
    )

    if ctx.prev is None:
        logits[:, :, EMPLOY] = 0.3 * np.minimum(age - 16, 10) / 10
        if preset.non_employment:
            logits[:, :, UNEMP] = unemp_base - 0.5
            logits[:, :, NILF] = nilf_base - 0.5
            logits[:, :, SCHOOL] = school_base + 0.5
        return None, logits

    prev = ctx.prev
    is_occ = prev < world.num_occupations
    level = np.where(is_occ, world.level_of[prev], 0).astype(float)
    log_tenure = np.log(ctx.tenure)
    gap_extra = ctx.gap - 1.0

    occ_stay = (
        _type_params(world, "stay")
        - 0.4
        + 1.0 * log_tenure
        - 0.5 * gap_extra
        + 0.15 * level
        - 0.3 * rec
    )
    is_u, is_n, is_s = (
        (prev == world.unemployed_id),
        (prev == world.nilf_id),
        (prev == world.school_id),
    )
    attach = _type_params(world, "attachment")
    state_stay = (
        is_u * (-0.4 + 0.8 * rec - 0.5 * attach)
        + is_n * (0.8 + 0.1 * old - 0.5 * attach)
        + is_s * (0.5 + 2.0 * _young(age, 22) - 0.3 * np.maximum(age - 22, 0))
        + 0.6 * log_tenure
        - 0.5 * gap_extra
    )
    stay = np.where(is_occ, occ_stay, state_stay)

    top = (world.promotion_of[prev] < 0) | ~is_occ
    promote = _type_params(world, "promote") + 0.35 * e - 0.25 * level
    logits[:, :, PROMOTE] = np.where(top, NEG_INF, promote)
    logits[:, :, LATERAL] = np.where(is_occ, _type_params(world, "lateral"), NEG_INF)
    logits[:, :, SWITCH] = np.where(is_occ, _type_params(world, "switch"), NEG_INF)
    logits[:, :, EMPLOY] = np.where(is_occ, NEG_INF, 1.0 + attach + 0.25 * e - 0.8 * rec * is_u)
    if preset.non_employment:
        state_offset = np.where(is_occ, 0.0, -1.0)
        logits[:, :, UNEMP] = np.where(is_u, NEG_INF, unemp_base + state_offset)
        logits[:, :, NILF] = np.where(is_n, NEG_INF, nilf_base + state_offset - 0.5 * (~is_occ))
        logits[:, :, SCHOOL] = np.where(is_s, NEG_INF, school_base + 2 * state_offset)
    return stay, logits


def _reference_level(world: World, age: np.ndarray) -> np.ndarray:
    """Career stage used to place (re-)entrants on a ladder."""
    return np.clip((age - 18) // 7, 0, world.num_levels - 1).astype(np.int64)


def target_probabilities(world: World, ctx: StepContext, target: np.ndarray) -> np.ndarray:
    """P(target | component, type) for each type and component: (K, n, C)."""
    K, n = world.num_types, len(target)
    probs = np.zeros((K, n, len(COMPONENTS)))
    t_occ = target < world.num_occupations
    t_fam = np.where(t_occ, world.family_of[target], 0)
    t_lvl = np.where(t_occ, world.level_of[target], 0)
    pref = world.family_pref[:, ctx.region, :]  # (K, n, F)
    rows = np.arange(n)
    pref_target = pref[:, rows, t_fam] * t_occ  # (K, n)
    pref_total = pref.sum(-1)
    ladders = world.num_ladders

    entry_level = world.level_dist[_reference_level(world, ctx.age), ctx.education, t_lvl]
    probs[:, :, EMPLOY] = pref_target / pref_total * entry_level / ladders
    probs[:, :, UNEMP] = target == world.unemployed_id
    probs[:, :, NILF] = target == world.nilf_id
    probs[:, :, SCHOOL] = target == world.school_id
    if ctx.prev is not None:
        prev = ctx.prev
        p_occ = prev < world.num_occupations
        p_fam = np.where(p_occ, world.family_of[prev], 0)
        p_lvl = np.where(p_occ, world.level_of[prev], 0)
        probs[:, :, PROMOTE] = (world.promotion_of[prev] == target) & p_occ
        probs[:, :, LATERAL] = world.lateral[prev, target]
        other_families = pref_total - pref[:, rows, p_fam]
        new_family = t_occ & p_occ & (t_fam != p_fam)
        switch_level = world.level_dist[p_lvl, ctx.education, t_lvl]
        probs[:, :, SWITCH] = np.where(
            new_family, pref_target / other_families * switch_level / ladders, 0.0
        )
    return probs


def _softmax(logits: np.ndarray) -> np.ndarray:
    top = logits.max(-1, keepdims=True)
    w = np.exp(logits - top)
    return w / w.sum(-1, keepdims=True)


def _log_sigmoid(x: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -x)


Logits = tuple[np.ndarray | None, np.ndarray]


def log_prob(
    world: World,
    preset: Preset,
    ctx: StepContext,
    target: np.ndarray,
    logits: Logits | None = None,
) -> np.ndarray:
    """log P(target | context, type) for every type: (K, n).

    `logits` may pass in `stay_and_move_logits(world, preset, ctx)` already computed.
    """
    stay, move_logits = logits or stay_and_move_logits(world, preset, ctx)
    move = (_softmax(move_logits) * target_probabilities(world, ctx, target)).sum(-1)
    with np.errstate(divide="ignore"):
        if stay is None:
            return np.log(move)
        same = target == ctx.prev
        return np.where(
            same, _log_sigmoid(stay), _log_sigmoid(-stay) + np.log(np.where(same, 1.0, move))
        )


def _sample_rows(cdf: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sample one index per row from unnormalised cumulative weights (m, V)."""
    x = rng.random(len(cdf)) * cdf[:, -1]
    return (cdf <= x[:, None]).sum(1)


def sample(
    world: World,
    preset: Preset,
    ctx: StepContext,
    types: np.ndarray,
    rng: np.random.Generator,
    logits: Logits | None = None,
) -> np.ndarray:
    """Draw the job of year t for each person from its true type's distribution."""
    stay, logits = logits or stay_and_move_logits(world, preset, ctx)
    n = len(types)
    rows = np.arange(n)
    weights = _softmax(logits[types, rows])  # (n, C)
    component = _sample_rows(np.cumsum(weights, 1), rng)
    target = np.full(n, -1, dtype=np.int64)

    target[component == UNEMP] = world.unemployed_id
    target[component == NILF] = world.nilf_id
    target[component == SCHOOL] = world.school_id
    per_family = world.num_ladders * world.num_levels

    def place(mask: np.ndarray, family_weights: np.ndarray, level_weights: np.ndarray) -> None:
        m = int(mask.sum())
        if not m:
            return
        family = _sample_rows(np.cumsum(family_weights, 1), rng)
        level = _sample_rows(np.cumsum(level_weights, 1), rng)
        ladder = rng.integers(0, world.num_ladders, m)
        target[mask] = family * per_family + ladder * world.num_levels + level

    pref = world.family_pref[types, ctx.region]  # (n, F)
    employ = component == EMPLOY
    ref = _reference_level(world, ctx.age)
    place(employ, pref[employ], world.level_dist[ref[employ], ctx.education[employ]])
    if ctx.prev is not None:
        prev = ctx.prev
        promote = component == PROMOTE
        target[promote] = world.promotion_of[prev[promote]]
        lateral = component == LATERAL
        target[lateral] = _sample_rows(world.lateral_cdf[prev[lateral]], rng)
        switch = component == SWITCH
        own = world.family_of[prev[switch]]
        weights_switch = pref[switch].copy()
        weights_switch[np.arange(len(own)), own] = 0.0
        levels = world.level_dist[world.level_of[prev[switch]], ctx.education[switch]]
        place(switch, weights_switch, levels)
        stays = rng.random(n) < 1.0 / (1.0 + np.exp(-stay[types, rows]))
        target[stays] = prev[stays]
    if (target < 0).any():
        raise RuntimeError("simulator drew no job for some people (a bug in the process)")
    return target
