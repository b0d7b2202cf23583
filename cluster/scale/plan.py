"""What each point of a scaling study costs before it runs (`career scale --plan`): parameters,
tokens, FLOPs and an estimated time from measured throughput.

Parameters are counted on the model itself, built on the corpus's vocabulary (a sharded
corpus's, or for a simulated corpus not sharded yet, the vocabulary of a small simulated sample,
said in the plan). Tokens are the point's budget (updates x tokens per update); early stopping
may end it sooner. FLOPs: the model's `flops_per_token` (6 N plus attention over the corpus's mean
sequence length) times tokens.

Time: `MEASURED` holds training throughputs measured in BENCHMARKS.md, one reference model per
device. A point's throughput is the reference's effective FLOP/s over its own FLOPs per token, so
a 10x bigger model is 10x slower, capped at the fastest throughput measured on that device
(small models are held back by per-update overheads, not FLOPs), plus a start-up per point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from cluster.scale.grid import ModelSpec, Study, count_label
from eval.scaling.sizes import describe


@dataclass(frozen=True)
class Throughput:
    """A measured training throughput: tokens/s of one worker on `device` for a preset."""

    device: str
    preset: str
    tokens_per_second: float
    fastest: float  # the most tokens/s measured per worker on that device (any preset)
    start_up_seconds: float  # per point: Ray Train workers, DeepSpeed, evaluations, export
    source: str


MEASURED: dict[str, Throughput] = {
    "cpu": Throughput(
        "cpu",
        "small",
        5_097,
        60_000,
        30,
        "BENCHMARKS.md: `career pretrain --preset small`, 2 workers x 1 thread, 10,194 tokens/s "
        "(5,097 per worker; the scaling grid measured 4,600-5,400), and the scaling grid's tiny "
        "points, about 60,000 tokens/s per worker",
    ),
    "gpu": Throughput(
        "gpu",
        "paper",
        721_883,
        721_883,
        120,
        "BENCHMARKS.md, GPU throughput: `paper` preset, one H200, bf16, ZeRO-1, 64k tokens per "
        "update",
    ),
}


def estimated_seconds(
    flops_per_token: float,
    tokens: float,
    workers: int,
    device: str,
    reference_flops_per_token: float,
) -> float:
    """A point's time from the device's measured throughput (see the module docstring)."""
    measured = MEASURED[device]
    rate = measured.tokens_per_second * reference_flops_per_token / flops_per_token
    rate = min(rate, measured.fastest) * workers
    return tokens / rate + measured.start_up_seconds


def plan(study: Study, vocab_sizes: dict[str, int], mean_length: float) -> list[dict[str, Any]]:
    """One row per point: model, corpus size, parameters, tokens, FLOPs, estimated seconds."""
    device = "gpu" if study.gpus_per_worker else "cpu"
    reference = describe(
        ModelSpec(MEASURED[device].preset, MEASURED[device].preset), vocab_sizes, mean_length
    )["flops_per_token"]
    described = {m.name: describe(m, vocab_sizes, mean_length) for m in study.models}
    rows = []
    for point in study.points():
        model = described[point.model.name]
        tokens = point.updates * study.pretrain.tokens_per_update
        seconds = estimated_seconds(
            model["flops_per_token"], tokens, study.workers_per_point, device, reference
        )
        rows.append(
            {
                "point": point.name,
                "model": point.model.name,
                "preset": point.model.preset,
                "people": point.people,
                **model,
                "tokens": tokens,
                "updates": point.updates,
                "flops": model["flops_per_token"] * tokens,
                "estimated_seconds": round(seconds),
                "device": device,
                "workers": study.workers_per_point,
            }
        )
    return rows


def totals(study: Study, rows: list[dict[str, Any]], slots: int) -> dict[str, Any]:
    """The study's cost: device-hours over all points, and its wall time with `slots` points at
    a time (longest first)."""
    device = rows[0]["device"] if rows else "cpu"
    per_point = study.workers_per_point * (
        study.gpus_per_worker if device == "gpu" else study.cpus_per_worker
    )
    busy = [0.0] * max(slots, 1)
    for seconds in sorted((r["estimated_seconds"] for r in rows), reverse=True):
        busy[busy.index(min(busy))] += seconds
    hours = sum(r["estimated_seconds"] for r in rows) * per_point / 3600
    return {
        "points": len(rows),
        "flops": sum(r["flops"] for r in rows),
        f"{device}_hours": round(hours, 2),
        "wall_seconds": round(max(busy)),
        "side_by_side": max(slots, 1),
        "throughput_source": MEASURED[device].source,
    }


def plan_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """Columns and cells for printing the plan."""
    columns = [
        "point",
        "layers x width",
        "params (non-emb.)",
        "people",
        "tokens",
        "FLOPs",
        "est. time",
    ]
    cells = [
        [
            r["point"],
            f"{r['n_layer']} x {r['d_model']}",
            f"{count_label(r['parameters'])} ({count_label(r['non_embedding_parameters'])})",
            count_label(r["people"]),
            count_label(r["tokens"]),
            f"{r['flops']:.2e}",
            _duration(r["estimated_seconds"]),
        ]
        for r in rows
    ]
    return columns, cells


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def slots_for(study: Study, cpus: float, gpus: float) -> int:
    """How many points fit side by side on a cluster with these resources."""
    if study.gpus_per_worker:
        return max(1, math.floor(gpus / (study.workers_per_point * study.gpus_per_worker)))
    return max(1, math.floor(cpus / (study.workers_per_point * study.cpus_per_worker)))
