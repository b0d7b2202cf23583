"""Helpers shared by the benchmark scripts: machine description and result files."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).with_name("results")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{os.cpu_count()} cores ({cpu}), {mem_gb:.0f} GB RAM, Python {platform.python_version()}"
    )


def code_version() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,  # the repository's, wherever the script runs from
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def save(name: str, payload: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    payload = {
        "machine": machine(),
        "code_version": code_version(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        **payload,
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")
    return path


def career(*args: str) -> float:
    """Run one `career` command of this virtualenv, failing loudly with the end of its output;
    returns its wall time in seconds."""
    command = str(Path(sys.executable).with_name("career"))
    start = time.perf_counter()
    done = subprocess.run([command, *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"career {' '.join(args[:1])} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def best_valid(run: Path) -> float:
    """The best validation perplexity a training run recorded."""
    return json.loads((run / "metrics.json").read_text())["best_valid_perplexity"]
