"""`career synth`: generate a simulated corpus chunk by chunk and write it in the chosen layout.

The layouts themselves (name -> writer) are `data_shards.writers.LAYOUTS`; this module adds the
progress bars and the console line of the command.
"""

from __future__ import annotations

import pyarrow as pa

from cluster.console import console, progress
from data_shards import storage, writers
from data_shards.synth.generate import chunk_sizes, simulate
from data_shards.synth.presets import get_preset


def simulate_table(
    preset_name: str, people: int | None, seed: int, description: str | None = None
) -> pa.Table:
    """The whole corpus as one table, with a progress bar over chunks."""
    preset = get_preset(preset_name)
    people = preset.default_people if people is None else people
    if people <= 0:
        raise ValueError(f"--people must be positive, got {people}")
    batches = simulate(preset, people, seed)
    total = len(chunk_sizes(people))
    return pa.Table.from_batches(
        list(progress(batches, total, description or f"simulating {preset_name}"))
    )


def write_layout(
    records: writers.Records,
    out: str,
    layout: str,
    fractions=(0.9, 0.05, 0.05),
    storage_options=None,
) -> None:
    """Write a table or a stream of record batches in one of the readable layouts."""
    writers.write_layout(records, out, layout, fractions, storage_options)


def run_synth(
    preset: str,
    people: int | None,
    seed: int,
    out: str,
    layout: str,
    fractions=(0.9, 0.05, 0.05),
    storage_options=None,
) -> int:
    """Stream the corpus chunk by chunk into the writer: memory stays at one chunk."""
    spec = get_preset(preset)
    people = spec.default_people if people is None else people
    if people <= 0:
        raise ValueError(f"--people must be positive, got {people}")
    batches = progress(
        simulate(spec, people, seed), len(chunk_sizes(people)), f"simulating {preset}"
    )
    write_layout(batches, out, layout, fractions, storage_options)
    console.print(
        f"wrote {people:,} simulated {preset} careers to {storage.redact(out)} ({layout})"
    )
    return people
