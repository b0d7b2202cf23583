"""Who is sampled and when they are observed: the design of each simulated data source.

`resumes` imitates an online resume corpus (no non-employment states, a white-collar type mix,
randomly unlisted years); the survey presets follow each survey's sampling frame and interview
calendar, with the three non-employment states, wages, attrition and missed interviews.
`wage-gap` is the NLSY79 design with another wage equation (`WageDesign`): a known gender gap in
log wages given the whole history, for checking wage-gap estimators (`eval.wages.gap`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from data_shards.synth.world import EDUCATION_LEVELS, ETHNICITIES, WORKER_TYPES


def interview_years(first: int, yearly_until: int, last: int) -> tuple[int, ...]:
    """Yearly waves from `first` to `yearly_until`, then every two years up to `last`."""
    return tuple(range(first, yearly_until + 1)) + tuple(range(yearly_until + 2, last + 1, 2))


@dataclass(frozen=True)
class WageDesign:
    """How log wages are made (`generate._wages`); the defaults are the frozen process.

    log wage = 2 + family premium + 0.09 level + 0.08 education + `tenure` x log(tenure)
               + `type_effect` x the latent type's premium + 0.01 (year - 1990)
               - `scar` x earlier observed years out of work (unemployed, out of the labor force)
               + `female_gap` x female + N(0, 0.3^2)

    With `type_effect` 0 every term but the gap and the noise is a function of what a model is
    shown (the observed jobs, years, education): the gap given the whole history is then exactly
    `female_gap` for everyone, which is what makes it a known truth.
    """

    type_effect: float = 1.0
    tenure: float = 0.06
    scar: float = 0.0
    female_gap: float = 0.0

    def __post_init__(self) -> None:
        if self.scar < 0 or self.type_effect < 0:
            raise ValueError("WageDesign: scar and type_effect must not be negative")

    @property
    def history_explains_all(self) -> bool:
        """True when, given the observed history and gender, only noise is left (no latent type)."""
        return self.type_effect == 0

    def true_gap(self, by: str) -> float | None:
        """The log-wage gap of women minus men given the whole history (None: not known exactly,
        because the latent type, which gender tilts, also enters wages)."""
        if by != "gender" or not self.history_explains_all:
            return None
        return self.female_gap

    def to_dict(self) -> dict[str, float]:
        return {
            name: getattr(self, name) for name in ("type_effect", "tenure", "scar", "female_gap")
        }


@dataclass(frozen=True)
class Preset:
    """One simulated data source. Type and education mixes are shares (normalised on use)."""

    name: str
    default_people: int
    birth_years: tuple[int, int]  # inclusive range, uniform
    type_mix: tuple[float, ...]
    education_mix: tuple[float, ...]  # final degree shares over EDUCATION_LEVELS
    non_employment: bool
    # Surveys: interview calendar, ages in scope, attrition per wave, missed-interview chance.
    waves: tuple[int, ...] = ()
    ages: tuple[int, int] = (14, 80)
    attrition: float = 0.0
    missed_wave: float = 0.0
    # Resumes: when the resume was collected, how many years it lists, unlisted-year chance.
    collection_years: tuple[int, int] = (2015, 2019)
    listed_years_mean: float = 11.0
    unlisted_year: float = 0.0
    demographics: bool = True  # gender and ethnicity recorded
    ethnicity_mix: tuple[float, ...] = (0.70, 0.13, 0.12, 0.05)
    wages: bool = True
    wage_missing: float = 0.10
    wage_design: WageDesign = WageDesign()
    survey_weights: bool = True
    notes: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if len(self.type_mix) != len(WORKER_TYPES):
            raise ValueError(f"{self.name}: type_mix needs {len(WORKER_TYPES)} shares")
        if len(self.education_mix) != len(EDUCATION_LEVELS):
            raise ValueError(f"{self.name}: education_mix needs {len(EDUCATION_LEVELS)} shares")
        if len(self.ethnicity_mix) != len(ETHNICITIES):
            raise ValueError(f"{self.name}: ethnicity_mix needs {len(ETHNICITIES)} shares")
        if self.birth_years[0] > self.birth_years[1]:
            raise ValueError(f"{self.name}: birth_years range is empty")

    @property
    def is_survey(self) -> bool:
        return bool(self.waves)


SURVEY_TYPE_MIX = (0.07, 0.06, 0.08, 0.15, 0.14, 0.18, 0.19, 0.13)

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            name="resumes",
            default_people=100_000,
            birth_years=(1950, 1996),
            type_mix=(0.24, 0.22, 0.15, 0.15, 0.07, 0.07, 0.07, 0.03),
            education_mix=(0.03, 0.20, 0.22, 0.35, 0.20),
            non_employment=False,
            collection_years=(2015, 2019),
            listed_years_mean=12.5,
            unlisted_year=0.08,
            demographics=False,
            wages=False,
            survey_weights=False,
            notes="online resumes: no unemployment/out-of-labor-force/school states",
        ),
        Preset(
            name="nlsy79",
            default_people=12_686,
            birth_years=(1957, 1964),
            type_mix=SURVEY_TYPE_MIX,
            education_mix=(0.14, 0.42, 0.20, 0.16, 0.08),
            non_employment=True,
            waves=interview_years(1979, 1994, 2020),
            ages=(14, 80),
            attrition=0.012,
            missed_wave=0.05,
            ethnicity_mix=(0.55, 0.25, 0.16, 0.04),
            notes="NLSY79: born 1957-64, yearly 1979-1994 then biennial",
        ),
        Preset(
            name="nlsy97",
            default_people=8_984,
            birth_years=(1980, 1984),
            type_mix=SURVEY_TYPE_MIX,
            education_mix=(0.10, 0.36, 0.24, 0.20, 0.10),
            non_employment=True,
            waves=interview_years(1997, 2011, 2021),
            ages=(12, 80),
            attrition=0.012,
            missed_wave=0.06,
            ethnicity_mix=(0.52, 0.26, 0.21, 0.01),
            notes="NLSY97: born 1980-84, yearly 1997-2011 then biennial",
        ),
        Preset(
            name="psid",
            default_people=20_000,
            birth_years=(1915, 1999),
            type_mix=SURVEY_TYPE_MIX,
            education_mix=(0.15, 0.35, 0.22, 0.18, 0.10),
            non_employment=True,
            waves=interview_years(1968, 1997, 2021),
            ages=(18, 70),
            attrition=0.02,
            missed_wave=0.03,
            ethnicity_mix=(0.62, 0.28, 0.06, 0.04),
            notes="PSID: all working ages, yearly to 1997 then biennial",
        ),
    )
}

#: NLSY79's design with a known gender gap: women earn 10% less (log) than men with the same
#: history; each earlier year out of work costs 8%, and women are out of work more often (the
#: process's gender terms), so history confounds the gap; no latent-type wage premium, so the gap
#: given the history is exactly -0.10. The other presets are untouched by it.
WAGE_GAP = dataclasses.replace(
    PRESETS["nlsy79"],
    name="wage-gap",
    default_people=5_000,
    wage_design=WageDesign(type_effect=0.0, scar=0.08, female_gap=-0.10),
    notes="NLSY79 design; log wages with a known gender gap given history (-0.10)",
)
PRESETS[WAGE_GAP.name] = WAGE_GAP


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}") from None
