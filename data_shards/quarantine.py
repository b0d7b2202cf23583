"""Where malformed records go: counted, kept with their reason and source location, never lost.

Every reader fills a `Quarantine` and returns a `ReadReport`; the invariant
`people_read == people_accepted + people_quarantined` is checked when the report is made.

An input that yields no accepted record is refused (`data_shards.formats.no_record_error`); one
with more than `HIGH_SHARE` of its people or rows quarantined is accepted, loudly: a dataset's
manifest records its `quarantined_share` and most common reasons, and `career shard` (and
`career inspect`, `career run`) print `high_share_warning` at the end.
"""

from __future__ import annotations

import collections
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from data_shards import storage


@dataclass(frozen=True)
class QuarantineEntry:
    """One rejected record or row: `source` is `path:line` (or `path:row N`), `kind` person or row."""

    source: str
    reason: str
    person_id: str | None = None
    kind: str = "person"
    record: str | None = None

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if v is not None}, sort_keys=True)


#: A reason's closing parenthesis: the detail of one record ("(byte 0xe9 at column 3)").
_TRAILING_DETAIL = re.compile(r"\s*\([^()]*\)$")
#: Raw record text kept in an entry is cut to this many characters (a resume can be large).
MAX_RECORD_CHARS = 2000


@dataclass
class Quarantine:
    """Collects rejected people and rows during one read."""

    entries: list[QuarantineEntry] = field(default_factory=list)

    def add(
        self,
        source: str,
        reason: str,
        *,
        person_id: str | None = None,
        kind: str = "person",
        record: Any = None,
    ) -> None:
        text = None
        if record is not None:
            text = record if isinstance(record, str) else json.dumps(record, default=str)
            text = text[:MAX_RECORD_CHARS]
        self.entries.append(QuarantineEntry(source, reason, person_id, kind, text))

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[QuarantineEntry]:
        return iter(self.entries)

    def top_reasons(self, n: int = 5) -> list[tuple[str, int]]:
        """Most common reasons, with the variable part (after the first ':', and a closing
        parenthesis such as "(byte 0xe9 at column 3)") stripped."""
        counter = collections.Counter(
            _TRAILING_DETAIL.sub("", e.reason.split(":")[0]) for e in self.entries
        )
        return sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


@dataclass
class ReadReport:
    """What a reader saw. `rows_*` count input rows where the input has rows per person-year."""

    source: str
    people_read: int
    people_accepted: int
    people_quarantined: int
    rows_read: int = 0
    rows_quarantined: int = 0
    notes: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.people_read != self.people_accepted + self.people_quarantined:
            raise RuntimeError(
                f"reader lost people in {self.source}: read {self.people_read} != accepted "
                f"{self.people_accepted} + quarantined {self.people_quarantined}"
            )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


#: A share of people (or rows) quarantined above this is warned about: the input is probably read
#: with the wrong options, even if some records made it through.
HIGH_SHARE = 0.5


def quarantined_shares(
    people_read: int, people_quarantined: int, rows_read: int = 0, rows_quarantined: int = 0
) -> dict[str, float]:
    """The share of the people read that were quarantined, and of the rows where the input has
    rows per person-year (a panel); rounded as a manifest stores them."""
    shares = {"people": round(people_quarantined / people_read, 4) if people_read else 0.0}
    if rows_read:
        shares["rows"] = round(rows_quarantined / rows_read, 4)
    return shares


def high_share_warning(
    shares: dict[str, float], top_reasons: list[tuple[str, int]], evidence: str
) -> str | None:
    """One line saying that more than `HIGH_SHARE` of the people or rows were quarantined, with
    the most common reasons and `evidence` (where every entry is); None when the shares are lower."""
    worst = max(shares, key=lambda unit: shares[unit])
    if shares[worst] <= HIGH_SHARE:
        return None
    both = f" (people {shares['people']:.1%}, rows {shares['rows']:.1%})" if len(shares) > 1 else ""
    reasons = "; ".join(f"{reason} ({count:,})" for reason, count in top_reasons[:3])
    return (
        f"{shares[worst]:.1%} of the {worst} read were quarantined{both}, more than "
        f"{HIGH_SHARE:.0%}; most common reasons: {reasons}; {evidence}. "
        "Is --format, a column mapping or --year-base wrong?"
    )


def write_quarantine(url: str, entries: Iterable[QuarantineEntry], storage_options=None) -> int:
    """Write entries as JSON Lines to `url` atomically; returns how many were written."""
    lines = [e.to_json() for e in entries]
    storage.write_bytes_atomic(
        url, ("\n".join(lines) + ("\n" if lines else "")).encode(), storage_options
    )
    return len(lines)
