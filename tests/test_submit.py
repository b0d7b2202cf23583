"""`career submit` and `career jobs` against a real Ray head with token authentication.

A module fixture starts a head of its own (`ray start --head --block`: a separate cluster from the
session's in-process Ray of conftest.py), bound to 127.0.0.1 with every port free-chosen, the
dashboard (the Jobs API) on 127.0.0.1, and `RAY_AUTH_MODE=token` with a fresh token in a 0600
file named by `RAY_AUTH_TOKEN_PATH`. It is stopped by signalling the process group it started
(never `ray stop`, which stops every Ray instance of the machine). Every `career` run here is a
subprocess, as a user runs it, and none may print the token.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from cluster.cli import COMMANDS, main
from cluster.submit.job import entrypoint_of

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]  # the working dir shipped with each job
CAREER = str(BIN / "career")
TINY = [
    "--preset",
    "tiny",
    "--updates",
    "3",
    "--tokens-per-update",
    "1500",
    "--zero-stage",
    "1",
    "--eval-every",
    "3",
    "loader_workers=0",
    "cpu_threads=1",
]
#: Ray's client variables: the tests set each one themselves.
RAY_CLIENT_ENV = ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


@dataclass
class Head:
    address: str  # the dashboard's URL (Jobs API)
    token: str
    token_path: Path
    env: dict[str, str]  # a client's environment: token mode, the token file, RAY_ADDRESS


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM then SIGKILL to the head's process group (the processes this fixture started)."""
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                proc.wait(timeout=5)
                return
            proc.poll()  # reap the leader if it is the one left
            time.sleep(0.2)


def _stop_running_jobs(head: Head) -> None:
    """Job drivers run in sessions of their own: stop any left running by a failed test."""
    from ray.job_submission import JobSubmissionClient

    try:
        client = JobSubmissionClient(
            head.address, headers={"Authorization": f"Bearer {head.token}"}
        )
        for job in client.list_jobs():
            if job.submission_id and not job.status.is_terminal():
                client.stop_job(job.submission_id)
    except Exception:  # the head may be gone already; the group is killed next anyway
        pass


@pytest.fixture(scope="module")
def head():
    root = Path(tempfile.mkdtemp(prefix="rayhead-", dir="/tmp"))  # short: Ray's socket paths
    token = secrets.token_hex(32)
    token_path = root / "auth_token"
    token_path.write_text(token)
    token_path.chmod(0o600)
    (
        gcs,
        dashboard,
        client_server,
        agent_http,
        agent_grpc,
        runtime_env,
        metrics,
        node_manager,
        object_manager,
    ) = _free_ports(9)
    env = {k: v for k, v in os.environ.items() if k not in RAY_CLIENT_ENV}
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token_path),
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",  # every server on 127.0.0.1 (cluster/ray_session.py)
        RAY_USAGE_STATS_ENABLED="0",
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # job drivers find `career`
    )
    command = [
        str(BIN / "ray"),
        "start",
        "--head",
        "--block",
        "--node-ip-address",
        "127.0.0.1",
        "--port",
        str(gcs),
        "--dashboard-host",
        "127.0.0.1",
        "--dashboard-port",
        str(dashboard),
        "--include-dashboard",
        "true",
        "--ray-client-server-port",
        str(client_server),
        "--dashboard-agent-listen-port",
        str(agent_http),
        "--dashboard-agent-grpc-port",
        str(agent_grpc),
        "--runtime-env-agent-port",
        str(runtime_env),
        "--metrics-export-port",
        str(metrics),
        "--node-manager-port",
        str(node_manager),
        "--object-manager-port",
        str(object_manager),
        "--num-cpus",
        "2",
        "--object-store-memory",
        str(300 * 2**20),
        "--temp-dir",
        str(root / "ray"),
    ]
    log = (root / "head.log").open("w")
    proc = subprocess.Popen(
        command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    address = f"http://127.0.0.1:{dashboard}"
    client_env = {k: v for k, v in env.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    started = Head(address, token, token_path, {**client_env, "RAY_ADDRESS": address})
    try:
        _wait_until_up(address, token, proc, root / "head.log")
        yield started
    finally:
        _stop_running_jobs(started)
        _stop_group(proc)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def _wait_until_up(address: str, token: str, proc: subprocess.Popen, log: Path) -> None:
    request = urllib.request.Request(
        f"{address}/api/version", headers={"Authorization": f"Bearer {token}"}
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the Ray head did not answer within 120 s:\n{log.read_text()[-3000:]}")


def career(head: Head, *args: str, env: dict[str, str] | None = None, timeout: int = 240):
    """Run `career ARGS` with the head's client environment (or `env`); the token never shows."""
    proc = subprocess.run(
        [CAREER, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=head.env if env is None else env,
        cwd=ROOT,
    )
    assert head.token not in proc.stdout + proc.stderr
    return proc


def _job_id(proc: subprocess.CompletedProcess) -> str:
    job_id = proc.stdout.splitlines()[0]
    assert job_id.startswith("raysubmit_"), proc.stdout[:500]
    return job_id


# ----------------------------------------------------------------------------- refusals
def test_an_entrypoint_that_is_not_a_career_command_is_refused(capsys):
    """Refused before any cluster is contacted (the address is a closed port)."""
    nowhere = ["--address", "http://127.0.0.1:9"]
    for argv, said in [
        (["--", "echo", "hi"], "only career commands can be submitted, not echo"),
        (["--", "career shard; rm -rf ~"], "only career commands can be submitted"),
        (["--", "/usr/bin/python", "-m", "cluster.cli"], "only career commands"),
        ([], "no command to submit"),
        (["--"], "no command to submit"),
        (["--", "career"], "no career command to submit"),
        (["--", "career", "submit", "--", "career", "synth"], "unknown career command 'submit'"),
        (["--", "career", "nonsense"], "unknown career command 'nonsense'"),
    ]:
        assert main(["submit", *nowhere, *argv]) == 2, argv
        err = capsys.readouterr().err
        assert said in err and "cannot reach" not in err, (argv, err)


def test_an_unreachable_cluster_or_a_missing_working_dir_exits_2(tmp_path, monkeypatch, capsys):
    for name in RAY_CLIENT_ENV:
        monkeypatch.delenv(name, raising=False)
    assert main(["jobs", "list", "--address", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert "cannot reach the Ray Jobs API at http://127.0.0.1:9" in err and "Traceback" not in err
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:9")  # the default address
    assert main(["submit", "--", "career", "synth", "--preset", "psid", "--out", "/x"]) == 2
    assert "cannot reach the Ray Jobs API at http://127.0.0.1:9" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:  # refused while parsing
        main(["submit", "--working-dir", str(tmp_path / "nope"), "--", "career", "run"])
    assert exit_.value.code == 2 and "is not a folder" in capsys.readouterr().err


def test_the_entrypoint_is_quoted_and_joins_the_cluster():
    """Each argument is quoted (no shell syntax reaches the cluster); commands with --ray-address
    are given `auto` (join the job's cluster) unless they name one."""
    shard = entrypoint_of(["career", "shard", "--name", "x; rm -rf ~", "--out", "/d"], COMMANDS)
    assert shard == "career shard --ray-address auto --name 'x; rm -rf ~' --out /d"
    own = entrypoint_of(["career", "pretrain", "--ray-address", "10.0.0.1:6379"], COMMANDS)
    assert own == "career pretrain --ray-address 10.0.0.1:6379"
    assert entrypoint_of(["career", "synth", "--preset", "psid"], COMMANDS) == (
        "career synth --preset psid"  # synth starts no Ray
    )
    assert "--ray-address auto" in entrypoint_of(["career", "run"], COMMANDS)
    assert "--ray-address auto" in entrypoint_of(["career", "evaluate"], COMMANDS)


# ----------------------------------------------------------------------------- on a real head
@pytest.fixture
def as_client(head, monkeypatch):
    """This process as a client of the head (for `career jobs` run in-process through main)."""
    for name in RAY_CLIENT_ENV:
        monkeypatch.delenv(name, raising=False)
    for name in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.setenv(name, head.env[name])
    return head


def jobs(head: Head, capsys, *args: str) -> tuple[int, str, str]:
    """`career jobs ARGS` in-process: (exit code, stdout, stderr); the token never shows."""
    code = main(["jobs", *args])
    out, err = capsys.readouterr()
    assert head.token not in out + err
    return code, out, err


@pytest.fixture(scope="module")
def sharded(head, tmp_path_factory):
    """A sharding job, submitted and followed to its end: (its run, the dataset folder)."""
    out = tmp_path_factory.mktemp("store")
    proc = career(
        head,
        "submit",
        "--address",
        head.address,
        "--",
        "career",
        "shard",
        "--format",
        "synth",
        "--sim-preset",
        "nlsy79",
        "--people",
        "200",
        "--out",
        str(out),
        "--name",
        "s",
    )
    return proc, out / "s"


@pytest.mark.slow
def test_submit_a_sharding_job_then_read_its_logs_status_and_list(as_client, sharded, capsys):
    head = as_client
    proc, dataset = sharded
    assert proc.returncode == 0, proc.stderr[-3000:]
    job_id = _job_id(proc)
    assert f"job {job_id} SUCCEEDED" in proc.stderr
    assert "dataset" in proc.stdout and "200 people" in proc.stdout  # the followed logs
    assert (dataset / "manifest.json").is_file()
    # Ray's notes about every file it leaves out are kept quiet.
    assert "Ignoring upload" not in proc.stderr and "ignored by default" not in proc.stderr

    code, out, err = jobs(head, capsys, "logs", job_id)  # the address from RAY_ADDRESS
    assert code == 0 and "200 people" in out, err
    code, out, _ = jobs(head, capsys, "status", job_id)
    assert code == 0 and f"{job_id}: SUCCEEDED" in out
    assert "career shard --ray-address auto --format synth" in out
    code, out, _ = jobs(head, capsys, "list", "--address", head.address)
    assert code == 0 and out.splitlines()[0].split() == ["ID", "STATUS", "START", "ENTRYPOINT"]
    row = next(line for line in out.splitlines() if line.startswith(job_id))
    assert "SUCCEEDED" in row and "career shard" in row and " UTC " in row
    for action in ("status", "logs", "stop"):
        code, _, err = jobs(head, capsys, action, "raysubmit_nosuchjob")
        assert code == 2 and "no job raysubmit_nosuchjob on the Ray cluster" in err, err
    assert head.token not in out + err


@pytest.mark.slow
def test_submit_a_tiny_pretraining_job(head, sharded, tmp_path):
    """Ray Train inside the job, on the job's cluster (`--ray-address auto` added)."""
    _, dataset = sharded
    run = tmp_path / "run"
    proc = career(
        head,
        "submit",
        "--",
        "career",
        "pretrain",
        "--data",
        str(dataset),
        "--out",
        str(run),
        "--workers",
        "1",
        *TINY,
        timeout=480,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "model package" in proc.stdout and "SUCCEEDED" in proc.stderr
    assert (run / "metrics.json").is_file() and (run / "package" / "model.safetensors").is_file()


@pytest.mark.slow
def test_a_failing_job_exits_with_the_commands_code(head, tmp_path):
    """The command failed on the cluster with exit 2 (bad input): so does `career submit`."""
    missing = tmp_path / "missing.csv"
    proc = career(
        head, "submit", "--", "career", "inspect", "--format", "panel", "--input", str(missing)
    )
    job_id = _job_id(proc)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"career submit: error: job {job_id} FAILED" in proc.stderr
    assert "does not exist" in proc.stdout  # the command's own message, in the followed logs


@pytest.mark.slow
def test_stop_a_running_job(as_client, tmp_path, capsys):
    """A long simulation, followed by `career submit`, stopped by `career jobs stop`: the job ends
    STOPPED, the follower exits 1 saying so, and the output file is never written."""
    head = as_client
    out = tmp_path / "big.jsonl"
    follower = subprocess.Popen(
        [
            CAREER,
            "submit",
            "--",
            "career",
            "synth",
            "--preset",
            "resumes",
            "--people",
            "5000000",
            "--layout",
            "resume-jsonl",
            "--out",
            str(out),
        ],
        env=head.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        job_id = follower.stdout.readline().strip()
        assert job_id.startswith("raysubmit_"), job_id
        deadline = time.monotonic() + 120
        while "RUNNING" not in (status := jobs(head, capsys, "status", job_id))[1]:
            assert time.monotonic() < deadline and "PENDING" in status[1], status
            time.sleep(0.5)
        code, said, err = jobs(head, capsys, "stop", job_id)
        assert code == 0 and f"{job_id}: STOPPED" in said, err
        rest, err = follower.communicate(timeout=120)
    finally:
        if follower.poll() is None:
            follower.kill()
    assert follower.returncode == 1 and f"job {job_id} STOPPED" in err, err[-2000:]
    assert head.token not in rest + err
    assert not out.exists()
    code, said, _ = jobs(head, capsys, "stop", job_id)
    assert code == 0 and "had already ended (STOPPED)" in said
    code, said, _ = jobs(head, capsys, "list")
    assert any(line.startswith(job_id) and "STOPPED" in line for line in said.splitlines())


@pytest.mark.slow
def test_a_wrong_or_missing_token_is_refused_without_printing_it(
    as_client, tmp_path, monkeypatch, capsys
):
    head = as_client
    wrong = "wrongtoken-" + secrets.token_hex(16)
    monkeypatch.setenv("RAY_AUTH_TOKEN", wrong)  # RAY_AUTH_TOKEN wins over the file
    never = tmp_path / "never"
    for argv in (
        ["jobs", "list"],
        ["submit", "--no-wait", "--", "career", "synth", "--preset", "psid", "--out", str(never)],
    ):
        assert main(argv) == 2, argv
        out, err = capsys.readouterr()
        assert "refused the token from RAY_AUTH_TOKEN (HTTP 403)" in err, err
        assert "not the cluster's token" in err and not out
        assert wrong not in out + err and head.token not in out + err
    assert not never.exists()
    monkeypatch.delenv("RAY_AUTH_TOKEN")

    # Token mode without a token anywhere (a HOME without ~/.ray/auth_token): refused at once.
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert main(["jobs", "list"]) == 2
    assert "RAY_AUTH_MODE=token but no token was found" in capsys.readouterr().err
    # A token file that is not there.
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "nope"))
    assert main(["jobs", "list"]) == 2
    assert "which does not exist" in capsys.readouterr().err

    # Token mode off: nothing is sent and the cluster answers 401. (A subprocess: Ray's own
    # config, which decides whether its client adds a token, is read once per process.)
    off = {k: v for k, v in head.env.items() if k != "RAY_AUTH_MODE"}
    proc = career(head, "jobs", "list", env=off)
    assert proc.returncode == 2, proc.stderr
    assert "requires a token (HTTP 401) and none was sent" in proc.stderr
    assert "set RAY_AUTH_MODE=token" in proc.stderr and "Traceback" not in proc.stderr
