"""The fixed world of the career simulator: occupations, worker types, places and their effects.

Everything here is a constant of the generative process, not of a run: a user's `--seed` changes
who is drawn, never the rules. Later issues measure models against this process, so changing any
number here must be announced (BENCHMARKS.md records the oracle figures it gives).

Job ids: occupations are 0 .. O-1 (family-major, then ladder, then level); the three
non-employment states follow at O, O+1, O+2 (surveys only).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data_shards.schema import IN_EDUCATION, NOT_IN_LABOR_FORCE, UNEMPLOYED

#: Occupation families (roughly SOC major groups), grouped by sector.
FAMILY_NAMES = (
    # white collar
    "management",
    "business_finance",
    "computer_math",
    "engineering",
    "science",
    "legal",
    "education",
    "healthcare_practitioner",
    "sales",
    "office_admin",
    # blue collar
    "construction",
    "extraction",
    "installation_repair",
    "production",
    "transportation",
    "farming",
    "protective_service",
    # service
    "food_service",
    "cleaning_maintenance",
    "personal_care",
    "healthcare_support",
    "arts_media",
)
SECTOR_OF_FAMILY = np.array([0] * 10 + [1] * 7 + [2] * 5)
#: Log-wage premium of each family over the base.
FAMILY_WAGE = np.array(
    [
        0.55,
        0.45,
        0.50,
        0.50,
        0.40,
        0.60,
        0.20,
        0.55,
        0.15,
        0.05,
        0.15,
        0.20,
        0.15,
        0.05,
        0.05,
        -0.15,
        0.10,
        -0.30,
        -0.25,
        -0.20,
        -0.10,
        0.00,
    ]
)

EDUCATION_LEVELS = ("less_than_high_school", "high_school", "some_college", "bachelors", "graduate")
#: Age at which each education level is completed (graduate: this plus 0..4 years).
EDUCATION_COMPLETION_AGE = np.array([0, 18, 20, 22, 24])

REGION_NAMES = ("northeast", "midwest", "south", "west")
#: State (postal code) -> census region index.
STATES = {
    "CT": 0,
    "ME": 0,
    "MA": 0,
    "NH": 0,
    "RI": 0,
    "VT": 0,
    "NJ": 0,
    "NY": 0,
    "PA": 0,
    "IL": 1,
    "IN": 1,
    "MI": 1,
    "OH": 1,
    "WI": 1,
    "IA": 1,
    "KS": 1,
    "MN": 1,
    "MO": 1,
    "NE": 1,
    "ND": 1,
    "SD": 1,
    "DE": 2,
    "DC": 2,
    "FL": 2,
    "GA": 2,
    "MD": 2,
    "NC": 2,
    "SC": 2,
    "VA": 2,
    "WV": 2,
    "AL": 2,
    "KY": 2,
    "MS": 2,
    "TN": 2,
    "AR": 2,
    "LA": 2,
    "OK": 2,
    "TX": 2,
    "AZ": 3,
    "CO": 3,
    "ID": 3,
    "MT": 3,
    "NV": 3,
    "NM": 3,
    "UT": 3,
    "WY": 3,
    "AK": 3,
    "CA": 3,
    "HI": 3,
    "OR": 3,
    "WA": 3,
}
#: Extra unemployment propensity by region.
REGION_UNEMPLOYMENT = np.array([0.10, 0.20, 0.0, 0.05])
#: (region, family name, multiplier) on the chance of entering a family.
REGION_FAMILY_TILT = (
    (0, "business_finance", 1.5),
    (0, "legal", 1.4),
    (1, "production", 1.8),
    (1, "transportation", 1.3),
    (2, "extraction", 1.6),
    (2, "farming", 1.3),
    (3, "computer_math", 1.6),
    (3, "farming", 1.5),
    (3, "arts_media", 1.4),
)

#: Years of recession: unemployment rises, spells last longer, fewer voluntary moves.
RECESSION_YEARS = (1974, 1975, 1980, 1981, 1982, 1990, 1991, 2001, 2008, 2009, 2010, 2020)
FIRST_YEAR, LAST_YEAR = 1900, 2030

GENDERS = ("male", "female")
ETHNICITIES = ("white", "black", "hispanic", "other")


@dataclass(frozen=True)
class WorkerType:
    """A latent career type: where it works and how it moves (logits, see process.py)."""

    name: str
    families: tuple[str, ...]
    stay: float  # base logit of keeping last year's occupation
    promote: float  # move components (relative logits)
    lateral: float
    switch: float
    unemployment: float
    out_of_labor_force: float
    school: float
    attachment: float  # pull back into work from a non-employment state
    wage: float
    female_tilt: float  # added to the prior logit for women


WORKER_TYPES = (
    WorkerType(
        "corporate_climber",
        ("management", "business_finance", "sales"),
        1.4,
        1.2,
        -0.6,
        -1.2,
        -3.5,
        -3.8,
        -3.0,
        1.5,
        0.25,
        -0.2,
    ),
    WorkerType(
        "technical_professional",
        ("computer_math", "engineering", "science"),
        2.3,
        0.2,
        0.3,
        -1.8,
        -3.6,
        -4.0,
        -2.5,
        1.5,
        0.30,
        -0.7,
    ),
    WorkerType(
        "licensed_professional",
        ("legal", "education", "healthcare_practitioner"),
        2.9,
        -0.4,
        -1.0,
        -2.5,
        -4.0,
        -3.5,
        -2.8,
        1.8,
        0.25,
        0.6,
    ),
    WorkerType(
        "office_sales_churner",
        ("sales", "office_admin", "food_service"),
        0.4,
        -0.8,
        0.8,
        0.6,
        -2.0,
        -2.4,
        -2.2,
        0.8,
        -0.05,
        0.5,
    ),
    WorkerType(
        "skilled_trades",
        ("construction", "installation_repair", "protective_service"),
        1.9,
        0.9,
        -0.3,
        -2.0,
        -2.4,
        -3.5,
        -3.5,
        1.0,
        0.10,
        -1.6,
    ),
    WorkerType(
        "production_transport",
        ("production", "transportation", "extraction"),
        1.3,
        -0.2,
        0.2,
        -1.0,
        -1.3,
        -2.8,
        -3.5,
        0.6,
        0.00,
        -1.0,
    ),
    WorkerType(
        "service_worker",
        ("food_service", "cleaning_maintenance", "personal_care"),
        0.0,
        -1.0,
        1.0,
        0.3,
        -1.2,
        -1.6,
        -2.0,
        0.3,
        -0.25,
        0.3,
    ),
    WorkerType(
        "intermittent",
        ("healthcare_support", "personal_care", "arts_media", "farming"),
        -0.4,
        -1.2,
        0.5,
        0.8,
        -0.7,
        -0.6,
        -1.4,
        -0.6,
        -0.20,
        0.7,
    ),
)

#: Share of a type's move-to-new-family mass spread evenly over families it does not prefer.
OFF_TYPE_SHARE = 0.06


@dataclass
class World:
    """Derived tables of the process; `World.build()` gives the one the presets use."""

    family_of: np.ndarray  # (J,) family index, -1 for states
    level_of: np.ndarray  # (J,) level 0..L-1, -1 for states
    promotion_of: np.ndarray  # (J,) job id one level up the same ladder, -1 if none
    lateral: np.ndarray  # (J, J) P(next | prev, lateral move), zero rows for states
    family_pref: np.ndarray  # (K, R, F) type-and-region weight of each family
    level_dist: np.ndarray  # (L, E, L) P(level | reference level, education)
    codes: tuple[str, ...]  # (J,) token of each job id
    num_occupations: int
    num_levels: int
    num_ladders: int
    types: tuple[WorkerType, ...]
    families: tuple[str, ...]
    recession: np.ndarray  # indexed by year - FIRST_YEAR
    family_wage: np.ndarray  # (F,)

    @property
    def num_jobs(self) -> int:
        return len(self.codes)

    @property
    def lateral_cdf(self) -> np.ndarray:
        if not hasattr(self, "_lateral_cdf"):
            self._lateral_cdf = np.cumsum(self.lateral, axis=1)
        return self._lateral_cdf

    @property
    def num_types(self) -> int:
        return len(self.types)

    @property
    def unemployed_id(self) -> int:
        return self.num_occupations

    @property
    def nilf_id(self) -> int:
        return self.num_occupations + 1

    @property
    def school_id(self) -> int:
        return self.num_occupations + 2

    @classmethod
    def build(
        cls, num_families: int = 22, ladders: int = 3, levels: int = 5, num_types: int = 8
    ) -> World:
        """The default world has 22 families x 3 ladders x 5 levels = 330 occupation codes.

        Smaller worlds (tests enumerate every sequence of a tiny one) reuse the same rules.
        """
        families = FAMILY_NAMES[:num_families]
        per_family = ladders * levels
        num_occ = num_families * per_family
        occ = np.arange(num_occ)
        family_of = np.concatenate([occ // per_family, [-1, -1, -1]])
        level_of = np.concatenate([occ % levels, [-1, -1, -1]])
        promotion_of = np.where(
            (level_of >= 0) & (level_of < levels - 1), np.arange(num_occ + 3) + 1, -1
        )
        # Codes look like 3-digit occupation codes; families 20 apart leave room for ladders.
        codes = tuple(f"{100 + 20 * (j // per_family) + j % per_family}" for j in occ) + (
            UNEMPLOYED,
            NOT_IN_LABOR_FORCE,
            IN_EDUCATION,
        )

        popularity = np.random.default_rng(20240202).lognormal(0.0, 0.5, size=num_occ)
        lateral = np.zeros((num_occ + 3, num_occ + 3))
        for j in occ:
            same = occ[(family_of[:num_occ] == family_of[j]) & (occ != j)]
            w = np.exp(-0.8 * np.abs(level_of[same] - level_of[j])) * popularity[same]
            lateral[j, same] = w / w.sum() if w.sum() > 0 else 0.0

        types = WORKER_TYPES[:num_types]
        index = {name: i for i, name in enumerate(families)}
        base = np.zeros((num_types, num_families))
        for k, wt in enumerate(types):
            mine = [index[f] for f in wt.families if f in index] or [k % num_families]
            base[k] = OFF_TYPE_SHARE / num_families
            base[k, mine] += (1 - OFF_TYPE_SHARE) / len(mine)
        tilt = np.ones((len(REGION_NAMES), num_families))
        for region, name, mult in REGION_FAMILY_TILT:
            if name in index:
                tilt[region, index[name]] = mult
        family_pref = base[:, None, :] * tilt[None, :, :]

        ref = np.arange(levels)[:, None, None]
        edu = np.arange(len(EDUCATION_LEVELS))[None, :, None]
        lvl = np.arange(levels)[None, None, :]
        logits = -0.9 * np.abs(lvl - ref) + 0.35 * (edu - 2) * lvl / max(levels - 1, 1) * 2
        level_dist = np.exp(logits)
        level_dist /= level_dist.sum(-1, keepdims=True)

        recession = np.zeros(LAST_YEAR - FIRST_YEAR + 1)
        recession[np.array(RECESSION_YEARS) - FIRST_YEAR] = 1.0
        return cls(
            family_of=family_of,
            level_of=level_of,
            promotion_of=promotion_of,
            lateral=lateral,
            family_pref=family_pref,
            level_dist=level_dist,
            codes=codes,
            num_occupations=num_occ,
            num_levels=levels,
            num_ladders=ladders,
            types=types,
            families=families,
            recession=recession,
            family_wage=FAMILY_WAGE[:num_families],
        )
