"""No credential is ever written or printed.

A canary secret (each holding `/` and `+`, as AWS secret keys do) sits in `AWS_SECRET_ACCESS_KEY`,
in `--storage-options` and in a URL. The pipeline runs against a real S3 endpoint: synth ->
shard (Ray tasks) -> pretrain (Ray Train, and torchrun, whose workers get the options in a 0600
file, watched while they run) -> export -> inspect, plus commands that fail with the secrets in
their arguments. Then every byte printed, every object in the bucket, every file under
the test folder (temporary files included: TMPDIR points there) and every file of the Ray
session's logs written meanwhile is searched for every canary.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import new_bucket

CAREER = str(Path(sys.executable).with_name("career"))
ENV_SECRET = "CanaryEnv/5ecret+Key+0001"
OPTION_SECRET = "CanaryOpt/5ecret+Key+0002"
URL_SECRET = "CanaryUrl/5ecret+Key+0003"
TOKEN_SECRET = "CanaryTok/5ecret+Key+0004"
CANARIES = (ENV_SECRET, OPTION_SECRET, URL_SECRET, TOKEN_SECRET)
TINY = [
    "--preset",
    "tiny",
    "--updates",
    "2",
    "--tokens-per-update",
    "1500",
    "--zero-stage",
    "1",
    "--eval-every",
    "2",
    "--workers",
    "2",
    "loader_workers=0",
    "cpu_threads=1",
]


def _ray_session_dir() -> Path | None:
    import ray

    node = ray._private.worker._global_node  # the session Ray instance of this test run
    return Path(node.get_session_dir_path()) if node is not None else None


def _files_with_canary(root: Path, since: float = 0.0) -> list[str]:
    found = []
    for path in root.rglob("*"):
        try:
            if not path.is_file() or path.is_symlink() or path.stat().st_mtime < since:
                continue
            data = path.read_bytes()
        except OSError:
            continue  # a socket or a file removed meanwhile
        found += [f"{path}: {c}" for c in CANARIES if c.encode() in data]
    return found


def check_the_torchrun_options_file(
    tmp_path: Path, env: dict, data: str, out: str, with_options: list[str]
) -> None:
    """`--launcher torchrun` hands the storage options to its workers in a file: while they run
    it is private (0600) in a private folder, no process's command line holds a canary, and it
    is gone when the command ends (the scan of every file under the test folder then follows)."""
    import psutil

    proc = subprocess.Popen(
        [
            CAREER,
            "pretrain",
            "--data",
            data,
            "--out",
            out,
            *TINY,
            "--launcher",
            "torchrun",
            *with_options,
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen: dict[str, int] = {}
    argv_leaks: set[str] = set()
    while proc.poll() is None:
        for path in (tmp_path / "tmp").glob("career-launch-*/storage_options.json"):
            with contextlib.suppress(FileNotFoundError):
                seen[str(path)] = path.stat().st_mode & 0o777
                seen[str(path.parent)] = path.parent.stat().st_mode & 0o777
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(proc.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    argv_leaks |= {c for c in CANARIES if c in " ".join(child.cmdline())}
        time.sleep(0.05)
    output = proc.stdout.read()
    assert proc.returncode == 0, output[-3000:]
    assert not any(c in output for c in CANARIES)
    files = [p for p in seen if p.endswith(".json")]
    assert len(files) == 1, seen  # the workers' options file was there while they ran ...
    assert seen[files[0]] == 0o600 and seen[str(Path(files[0]).parent)] == 0o700
    assert not Path(files[0]).exists() and not argv_leaks  # ... and is gone; never in argv


@pytest.mark.slow
def test_no_secret_is_written_or_printed(tmp_path, s3_endpoint, ray_address):
    import s3fs

    started = time.time() - 1
    root, options = new_bucket(s3_endpoint, "secrets", secret=OPTION_SECRET, token=TOKEN_SECRET)
    bucket = root.removeprefix("s3://")
    fs = s3fs.S3FileSystem(**options)
    (tmp_path / "tmp").mkdir()
    env = {
        **os.environ,
        "AWS_SECRET_ACCESS_KEY": ENV_SECRET,
        "AWS_ENDPOINT_URL": s3_endpoint,
        "TMPDIR": str(tmp_path / "tmp"),
    }
    printed: list[str] = []

    def career(*args: str, expect: int = 0) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [CAREER, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
        )
        printed.append(proc.stdout + proc.stderr)
        assert proc.returncode == expect, f"career {args[0]}: {proc.returncode}\n{proc.stderr}"
        return proc

    with_options = ["--storage-options", json.dumps(options)]
    root = f"s3://{bucket}"
    career(
        "synth",
        "--preset",
        "nlsy79",
        "--people",
        "300",
        "--layout",
        "resume-jsonl",
        "--out",
        f"{root}/input.jsonl",
        *with_options,
    )
    career(
        "shard",
        "--format",
        "resume-jsonl",
        "--input",
        f"{root}/input.jsonl",
        "--out",
        f"{root}/data",
        "--name",
        "survey",
        "--people-per-block",
        "32",
        "--ray-address",
        ray_address,
        *with_options,
    )
    # Through Ray Train, and side by side (independent runs) through torchrun, watched.
    ray_train = subprocess.Popen(
        [
            CAREER,
            "pretrain",
            "--data",
            f"{root}/data/survey",
            "--out",
            f"{root}/run",
            *TINY,
            "--ray-address",
            ray_address,
            *with_options,
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    check_the_torchrun_options_file(
        tmp_path, env, f"{root}/data/survey", f"{root}/run-torchrun", with_options
    )
    out, err = ray_train.communicate(timeout=600)
    printed.append(out + err)
    assert ray_train.returncode == 0, f"career pretrain: {ray_train.returncode}\n{err}"
    career("export", "--run", f"{root}/run", "--package", f"{root}/exported", *with_options)
    # Inspect with the environment's credentials (no storage options), quarantine written locally.
    career(
        "inspect",
        "--input",
        f"{root}/input.jsonl",
        "--format",
        "resume-jsonl",
        "--quarantine-out",
        "quarantine.jsonl",
    )
    assert (tmp_path / "quarantine.jsonl").exists()

    # Failures with the secrets in their arguments: the messages must mask them.
    failed = career(
        "inspect",
        "--input",
        f"s3://AKIACANARY:{URL_SECRET}@{bucket}/input.jsonl",
        "--format",
        "resume-jsonl",
        expect=2,
    )
    assert "credentials inside a URL are refused" in failed.stderr
    failed = career(
        "pretrain",
        "--data",
        f"{root}/missing",
        "--out",
        f"{root}/run2",
        *TINY,
        *with_options,
        expect=2,
    )
    assert "manifest.json" in failed.stderr
    leaked_options = {**options, "client_kwargs": {"endpoint_url": "http://127.0.0.1:9"}}
    career(
        "inspect",
        "--input",
        f"{root}/input.jsonl",
        "--format",
        "resume-jsonl",
        "--storage-options",
        json.dumps(leaked_options),
        expect=2,
    )

    assert fs.exists(f"{bucket}/exported/model.safetensors")
    assert fs.find(f"{bucket}/run/tb") and fs.find(f"{bucket}/run/checkpoints")
    leaks = [f"printed: {c}" for text in printed for c in CANARIES if c in text]
    for key in fs.find(bucket):
        leaks += [f"s3://{key}: {c}" for c in CANARIES if c.encode() in fs.cat_file(key)]
    leaks += _files_with_canary(tmp_path)
    session = _ray_session_dir()
    assert session is not None and session.is_dir()
    leaks += _files_with_canary(session, since=started)
    assert not leaks, "\n".join(leaks)
    assert len(fs.find(bucket)) > 20  # the search covered a real run: shards, checkpoints, ...
