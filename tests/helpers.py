"""Test helpers: a dataset read back through the loader (as records, or as a model's perplexity),
and the `career` command run as a user runs it."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from data_shards.manifest import load_manifest
from data_shards.stream import CareerLoader, StreamConfig
from data_shards.vocab import Vocabulary


def records_from_loader(
    data_url: str, split: str, storage_options=None, **config
) -> dict[str, dict]:
    """person_id -> record fields decoded from the loader's batches (one pass, no shuffle)."""
    vocab = Vocabulary.load(f"{data_url}/vocab.json", storage_options)
    fields = load_manifest(data_url, storage_options).fields
    loader = CareerLoader(
        data_url,
        StreamConfig(split=split, shuffle=False, loop=False, **config),
        num_workers=0,
        storage_options=storage_options,
    )
    people = {}
    for batch in loader:
        for i, person_id in enumerate(batch["person_id"]):
            n = int(batch["lengths"][i])
            record = {
                "jobs": [vocab.fields["job"][t] for t in batch["targets"][i, :n].tolist()],
                "years": [int(vocab.fields["year"][t]) for t in batch["year"][i, :n].tolist()],
                "inputs": batch["inputs"][i].tolist(),
            }
            if "education" in batch:
                record["education"] = [
                    vocab.fields["education"][t] for t in batch["education"][i, :n].tolist()
                ]
            for name in ("oracle_logp", "log_wage"):
                if name in batch:
                    record[name] = [
                        None if math.isnan(v) else v for v in batch[name][i, :n].tolist()
                    ]
            for name in fields["person_fields"]:
                ids = batch[name][i, :n].tolist()
                assert len(set(ids)) <= 1  # static fields repeat over the years
                token = vocab.fields[name][ids[0]] if ids and ids[0] else None
                column = {
                    "location": "location",
                    "gender": "gender",
                    "ethnicity": "ethnicity",
                    "birth_year": "birth_year",
                }[name]
                record[column] = int(token) if (name == "birth_year" and token) else token
            if "weight" in batch:
                record["weight"] = float(batch["weight"][i])
            assert person_id not in people, f"{person_id} seen twice"
            people[person_id] = record
    return people


def float32_list(values):
    return [None if v is None else float(np.float32(v)) for v in values]


CAREER = str(Path(sys.executable).with_name("career"))


#: Copies of /proc/cpuinfo: a CPU with native bf16, and the same without (tests/data/cpuinfo).
CPUINFO = Path(__file__).parent / "data" / "cpuinfo"
BF16_CPU = {"CAREER_CPUINFO": str(CPUINFO / "zen4-avx512-bf16.txt")}
FP32_CPU = {"CAREER_CPUINFO": str(CPUINFO / "zen4-without-bf16.txt")}


def career(
    *args: str,
    check: bool = True,
    timeout: int = 600,
    env: dict[str, str] | None = None,
    cwd: str | Path | None = None,
) -> subprocess.CompletedProcess:
    """Run the installed `career` command; with `check`, a failure raises with the end of its
    stderr. `env`: variables set for it (and the processes it starts) on top of this one's."""
    proc = subprocess.run(
        [CAREER, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **env} if env else None,
        cwd=cwd,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"career {' '.join(args)} failed ({proc.returncode}):\n{_first_error(proc.stderr)}"
        )
    return proc


def _first_error(err: str) -> str:
    """The end of a failed command's stderr, after the first traceback in it (a torchrun
    worker's own, printed long before the command's last line)."""
    start = err.find("Traceback")
    first = err[start : start + 4000] + "\n...\n" if start >= 0 else ""
    return first + err[-3000:]


def career_all(
    *commands: list[str], cwd: str | Path | None = None, timeout: int = 600
) -> list[subprocess.CompletedProcess]:
    """Run independent `career` commands side by side (a run's fixed costs, process start-ups
    and imports, overlap on the two cores); their results in order. A failure raises with the
    end of its stderr."""
    running = [
        (
            args,
            subprocess.Popen(
                [CAREER, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            ),
        )
        for args in commands
    ]
    done = []
    for args, proc in running:
        out, err = proc.communicate(timeout=timeout)
        if proc.returncode:
            raise AssertionError(
                f"career {' '.join(args)} failed ({proc.returncode}):\n{_first_error(err)}"
            )
        done.append(subprocess.CompletedProcess([CAREER, *args], proc.returncode, out, err))
    return done


def digest(*paths: str | Path) -> dict[str, str]:
    """sha256 of every file under `paths` (files or folders), by path: the same before and after
    a command shows it modified none of its inputs."""
    import hashlib

    out = {}
    for path in map(Path, paths):
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        assert files, f"{path}: nothing to hash"
        out.update({str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in files})
    return out


def loader_perplexity(model, data_url: str, split: str = "valid", storage_options=None) -> float:
    """exp(NLL / tokens) straight from the model over the loader (what training reports)."""
    loader = CareerLoader(
        data_url,
        StreamConfig(split=split, loop=False, shuffle=False),
        num_workers=0,
        storage_options=storage_options,
    )
    nll = tokens = 0.0
    with torch.no_grad():
        for batch in loader:
            loss, count = model.nll({k: v for k, v in batch.items() if isinstance(v, torch.Tensor)})
            nll, tokens = nll + float(loss), tokens + float(count)
    return math.exp(nll / tokens)


def new_bucket(endpoint: str, prefix: str = "test", **options) -> tuple[str, dict]:
    """A fresh bucket on the session's S3 endpoint (moto): its `s3://` URL and the storage
    options that reach it (moto's test credentials unless `options` say otherwise)."""
    import uuid

    import s3fs

    options = {
        "client_kwargs": {"endpoint_url": endpoint},
        "key": "testing",
        "secret": "testing",
        **options,
    }
    bucket = f"{prefix}-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(**options).mkdir(bucket)
    return f"s3://{bucket}", options
