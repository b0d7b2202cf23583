"""`career synth`: generate a simulated corpus chunk by chunk and write it in the chosen layout.

The layouts themselves (name -> writer) are `data_shards.writers.LAYOUTS`; this module adds the
progress bars and the console line of the command.
"""

from __future__ import annotations

from cluster.console import console, progress
from data_shards import storage, writers
from data_shards.synth.generate import chunk_sizes, simulate
from data_shards.synth.presets import get_preset


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
    writers.write_layout(batches, out, layout, fractions, storage_options)
    console.print(
        f"wrote {people:,} simulated {preset} careers to {storage.redact(out)} ({layout})"
    )
    return people
