"""`career wages`: the wage table, or with `--gap FIELD` the history-adjusted wage gap.

    career wages --model RUN/package --data DATASET [--out wages.json]
    career wages --model RUN/package --data DATASET --gap gender [--out gap.json]

The first compares the Mincer regression with Mincer plus the model's representation of each
person's history (`eval.wages.table`); the second estimates a group's log-wage gap raw, with
Mincer controls and given the whole history (`eval.wages.gap`). Both print a table and, with
`--out`, write their result as JSON (`{"wage_table": ...}` or `{"wage_gap": ...}`, the dicts the
eval functions return). Everything runs in this process with torch and numpy: no Ray.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from cluster import flags
from cluster.settings import StorageSettings
from data_shards import storage
from data_shards.schema import SPLITS
from eval.wages.gap import GAP_FIELDS


def parse_gap(text: str) -> tuple[str, str | None, str | None]:
    """`FIELD` or `FIELD:GROUP,REFERENCE` -> (field, group, reference)."""
    name, _, groups = text.partition(":")
    name = name.strip()
    if name not in GAP_FIELDS:
        raise ValueError(
            f"--gap takes one of {', '.join(GAP_FIELDS)} (as FIELD or "
            f"FIELD:GROUP,REFERENCE), not {text!r}"
        )
    if not groups:
        return name, None, None
    parts = [p.strip() for p in groups.split(",")]
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"--gap {name}:GROUP,REFERENCE names two values, not {groups!r}")
    return name, parts[0], parts[1]


@dataclass(kw_only=True)
class WagesSettings:
    """Wage models on a dataset with log wages. Without --gap: the Mincer regression against
    Mincer plus the model's representation of each person's history, fitted on train (ridge
    penalty chosen on valid), R^2 and MSE on the test people with person-bootstrap intervals.
    With --gap FIELD: the group's log-wage gap raw, with Mincer controls (OLS), and given the
    whole job history (a partially linear model cross-fitted over person folds)."""

    model: str = flags.option(
        help="model package with a representation (CAREER, or bag-of-jobs)",
        metavar="PKG",
        path=True,
    )
    data: str = flags.option(
        help="dataset with log wages (career shard of a simulated survey, or a panel with --wage)",
        metavar="DATASET",
        path=True,
    )
    out: str | None = flags.option(
        None, help="also write the result here as JSON", metavar="FILE", path=True
    )
    gap: str | None = flags.option(
        None,
        help="estimate the gap of a person field instead of the table: gender (women minus "
        "men) or FIELD:GROUP,REFERENCE, e.g. ethnicity:black,other",
        metavar="FIELD",
    )
    gap_splits: tuple[str, ...] = flags.option(
        SPLITS, help="splits whose people the gap is estimated on", metavar="SPLITS"
    )
    folds: int = flags.option(5, help="person folds of the gap's cross-fitting", metavar="K")
    pooling: str = flags.option(
        "state+sum",
        help="history features: the state at the year, or it and the running sum of the "
        "states (counts of what happened)",
        choices=("state", "state+sum"),
    )
    bootstrap: int = flags.option(
        1000, help="person-bootstrap replicates of the table's intervals (0: none)", metavar="N"
    )
    seed: int = flags.option(0, help="seed of the bootstrap and of the folds")
    tokens_per_batch: int = flags.option(
        8192, help="job-year tokens per batch read through the model", metavar="N"
    )
    threads: int | None = flags.option(None, help="torch threads (default: torch's)", metavar="N")
    storage: StorageSettings = field(default_factory=StorageSettings)
    #: --gap parsed: (field, group, reference), None without --gap
    gap_spec: tuple[str, str | None, str | None] | None = field(
        init=False, repr=False, metadata={"skip": True}
    )

    def __post_init__(self) -> None:
        if self.bootstrap < 0:
            raise ValueError(f"--bootstrap must not be negative, not {self.bootstrap}")
        if self.folds < 2:
            raise ValueError(f"--folds must be at least 2, not {self.folds}")
        if self.tokens_per_batch < 1 or (self.threads is not None and self.threads < 1):
            raise ValueError("--tokens-per-batch and --threads must be at least 1")
        unknown = [s for s in self.gap_splits if s not in SPLITS]
        if unknown or not self.gap_splits:
            raise ValueError(f"--gap-splits takes {', '.join(SPLITS)}, not {unknown}")
        self.gap_spec = parse_gap(self.gap) if self.gap else None
        self.model, self.data = storage.absolute(self.model), storage.absolute(self.data)
        self.out = storage.absolute(self.out) if self.out else None

    def paths_read(self) -> dict[str, str | None]:
        return {"--model": self.model, "--data": self.data}

    def paths_written(self) -> dict[str, str | None]:
        return {"--out": self.out}


def _interval(e: dict[str, Any], digits: int = 4) -> str:
    if e.get("low") is None:
        return f"{e['value']:.{digits}f}"
    return f"{e['value']:.{digits}f} [{e['low']:.{digits}f}, {e['high']:.{digits}f}]"


def print_table(result: dict[str, Any]) -> None:
    from cluster.console import console, print_rows

    rows = [
        [
            m["label"],
            _interval(m["test"]["r2"]),
            _interval(m["test"]["mse"]),
            f"{m['valid']['r2']:.4f}",
        ]
        for m in result["models"].values()
    ]
    diff = result["difference"]
    rows.append(
        ["difference (history - Mincer)", _interval(diff["r2"]), _interval(diff["mse"]), ""]
    )
    test = result["person_years"]["test"]
    print_rows(
        f"log wage on {test['person_years_with_wage']:,} test person-years "
        f"({result['bootstrap']['test_people']:,} people; 95% person bootstrap)",
        ["model", "test R^2", "test MSE", "valid R^2"],
        rows,
    )
    used = ", ".join(
        f"{s} {c['person_years_with_wage']:,} of {c['job_years']:,}"
        for s, c in result["person_years"].items()
    )
    console.print(
        f"person-years with a wage (used) of job-years: {used}; experience "
        f"{result['experience']}; ridge penalty {result['penalty']['chosen']:g} per row "
        f"(chosen on valid)"
    )


def print_gap(result: dict[str, Any]) -> None:
    from cluster.console import console, print_rows

    names = {
        "raw": "raw",
        "mincer_ols": "Mincer controls (OLS)",
        "history_dml": "given the job history (DML)",
    }
    truth = result.get("truth")
    rows = []
    for key, e in result["estimates"].items():
        row = [
            names[key],
            f"{e['estimate']:.4f}",
            f"{e['se']:.4f}",
            f"[{e['low']:.4f}, {e['high']:.4f}]",
        ]
        if truth is not None:
            row.append("yes" if result["covers_truth"][key] else "no")
        rows.append(row)
    columns = ["estimate of the gap", "log wage gap", "s.e.", "95% interval"]
    if truth is not None:
        columns.append(f"covers the truth ({truth:g})")
    used = result["person_years"]
    print_rows(
        f"{result['by']} gap: {result['group']} minus {result['reference']} "
        f"({used['used']:,} person-years of {used['people']:,} people: "
        f"{used['group_people']:,} {result['group']}, {used['reference_people']:,} "
        f"{result['reference']})",
        columns,
        rows,
    )
    dml = result["estimates"]["history_dml"]
    console.print(
        f"cross-fitted over {result['folds']} person folds; out-of-fold R^2 of the wage "
        f"{dml['out_of_fold_r2'][0]:.3f}, of the group {dml['out_of_fold_r2'][1]:.3f}; the "
        f"history leaves {dml['residual_group_share']:.1%} of the group's variance unexplained"
        + (
            "; the model's likelihood ratio of the history between the groups was a feature"
            if dml["likelihood_ratio"]
            else ""
        )
    )
    if used["other_group_person_years"]:
        console.print(
            f"{used['other_group_person_years']:,} person-years of people in neither group "
            "were left out"
        )


def run_wages(settings: WagesSettings) -> int:
    from cluster.console import console, people_bars
    from eval.wages import wage_models

    options = settings.storage.storage_options
    start = time.perf_counter()
    with people_bars() as bar:
        progress = bar("reading histories through the model")
        found = wage_models(
            settings.model,
            settings.data,
            table=settings.gap_spec is None,
            gap=settings.gap_spec,
            gap_splits=settings.gap_splits,
            folds=settings.folds,
            bootstrap=settings.bootstrap,
            seed=settings.seed,
            pooling=settings.pooling,
            tokens_per_batch=settings.tokens_per_batch,
            threads=settings.threads,
            storage_options=options,
            on_progress=progress,
        )
    gap = settings.gap_spec is not None
    result = {"wage_gap": found["gap"]} if gap else {"wage_table": found["table"]}
    if settings.out:
        storage.write_json(settings.out, result, options)
    if gap:
        print_gap(result["wage_gap"])
    else:
        print_table(result["wage_table"])
    written = f"; written to {storage.redact(settings.out)}" if settings.out else ""
    console.print(f"done in {time.perf_counter() - start:,.1f} s{written}")
    return 0
