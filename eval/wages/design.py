"""The Mincer design: the econometric wage model's columns for person-year rows.

    log wage ~ 1 + education + experience + experience^2 + occupation + year
               + location + ethnicity + gender              (the demographics the data has)

Categorical terms are dummies of the levels seen in the rows the design is fitted on, the most
frequent one left out as the base; a level met later (a valid or test person in an occupation no
training person had) falls to the base. Experience is potential experience, age - years of
schooling - 6 (floored at 0), where every row has a birth year and an education with known years
of schooling (a number, or one of the simulator's levels); otherwise it is the years since the
person's first observed year, and the design says so (`experience`). Experience enters in
decades, so its square stays of the same order as the dummies.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data_shards.vocab import Vocabulary
from eval.wages.features import PersonYears

#: Years of schooling of the simulator's education levels (others: the label read as a number).
SCHOOLING_YEARS = {
    "less_than_high_school": 10.0,
    "high_school": 12.0,
    "some_college": 14.0,
    "bachelors": 16.0,
    "graduate": 18.0,
}
POTENTIAL = "potential: age - years of schooling - 6"
OBSERVED = "observed: years since the person's first observed year"
DEMOGRAPHICS = ("location", "ethnicity", "gender")


def _number(token: str) -> float | None:
    try:
        value = float(token)
    except ValueError:
        return None
    return value if np.isfinite(value) else None


def schooling_years(token: str) -> float | None:
    """Years of schooling of an education token (None when it names no known amount)."""
    return SCHOOLING_YEARS.get(token, _number(token))


def _lookup(tokens: list[str], parse) -> np.ndarray:
    """parse(token) for every id of a vocabulary field; NaN where it gives None."""
    values = [parse(t) for t in tokens]
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def experience(rows: PersonYears, vocab: Vocabulary) -> tuple[np.ndarray, str]:
    """Experience in years of every row, and which definition was possible (see the module)."""
    if "birth_year" in rows.static and "education" in vocab.fields:
        birth = _lookup(vocab.fields["birth_year"], _number)[rows.static["birth_year"]]
        school = _lookup(vocab.fields["education"], schooling_years)[rows.education]
        potential = rows.year - birth - school - 6.0
        if len(rows) and np.isfinite(potential).all():
            return np.maximum(potential, 0.0), POTENTIAL
    return (rows.year - rows.first_year).astype(np.float64), OBSERVED


@dataclass(frozen=True)
class Factor:
    """A categorical term: its values on every row and the levels that get a column."""

    name: str
    values: np.ndarray  # (N,) ids
    levels: np.ndarray  # (L,) ids with a column (the base and unseen levels have none)


@dataclass(frozen=True)
class MincerDesign:
    """The Mincer columns of a fixed set of rows (see the module); `matrix(index)` builds them."""

    experience: np.ndarray  # (N,) years
    experience_kind: str
    factors: tuple[Factor, ...]

    @classmethod
    def fit(
        cls,
        rows: PersonYears,
        fit: np.ndarray,
        vocab: Vocabulary,
        exclude: tuple[str, ...] = (),
    ) -> MincerDesign:
        """Levels from the rows `fit` (a boolean mask); `exclude` leaves demographics out (the
        group whose wage gap is estimated is the treatment, not a control)."""
        years, kind = experience(rows, vocab)
        terms = {"education": rows.education, "occupation": rows.job, "year": rows.year}
        terms.update(
            {n: rows.static[n] for n in DEMOGRAPHICS if n in rows.static and n not in exclude}
        )
        factors = []
        for name, values in terms.items():
            seen, counts = np.unique(values[fit], return_counts=True)
            base = seen[np.argmax(counts)] if len(seen) else None
            factors.append(Factor(name, values, seen[seen != base]))
        return cls(years, kind, tuple(factors))

    @property
    def width(self) -> int:
        return 3 + sum(len(f.levels) for f in self.factors)

    def columns(self) -> dict[str, int]:
        """Columns per term: how big the design is."""
        out = {"intercept": 1, "experience": 2}
        out.update({f.name: len(f.levels) for f in self.factors})
        return out

    def matrix(self, index: np.ndarray) -> np.ndarray:
        """The rows `index` (integer indices) as a dense (len(index), width) float64 matrix."""
        n = len(index)
        out = np.zeros((n, self.width))
        decades = self.experience[index] / 10.0
        out[:, 0], out[:, 1], out[:, 2] = 1.0, decades, decades**2
        start = 3
        rows = np.arange(n)
        for factor in self.factors:
            count = len(factor.levels)
            if count:
                values = factor.values[index]
                where = np.minimum(np.searchsorted(factor.levels, values), count - 1)
                match = factor.levels[where] == values
                out[rows[match], start + where[match]] = 1.0
            start += count
        return out
