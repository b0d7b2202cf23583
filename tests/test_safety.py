"""Nothing lost, nothing leaked: outputs never destroy inputs, writes never replace devices or
unrelated folders, credentials are refused or masked, and files are not trusted blindly.

Each test fails without its defense (see RELIABILITY.md, which names them).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cluster.cli import main
from data_shards import storage
from data_shards.blocks import MAX_PAYLOAD_BYTES, decode_block, encode_block
from data_shards.errors import StructuralError
from data_shards.manifest import Manifest
from data_shards.writers import write_layout

CAREER = str(Path(sys.executable).with_name("career"))
RESUME = {"id": "a", "jobs": [{"title": "cook", "start": "2001", "end": "2004"}]}


def _jsonl(path: Path) -> Path:
    path.write_text(json.dumps(RESUME) + "\n" + json.dumps({**RESUME, "id": "b"}) + "\n")
    return path


# ----------------------------------------------------------------------------- outputs vs inputs
def _refused(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    return capsys.readouterr().err


def test_quarantine_out_over_the_input_is_refused_and_the_input_kept(tmp_path, capsys, monkeypatch):
    data = _jsonl(tmp_path / "x.jsonl")
    before = data.read_bytes()
    err = _refused(
        [
            "inspect",
            "--input",
            str(data),
            "--format",
            "resume-jsonl",
            "--quarantine-out",
            str(data),
        ],
        capsys,
    )
    assert "--quarantine-out is --input" in err and "destroy the input" in err
    assert data.read_bytes() == before
    # the same file through a symlink, and a relative path
    (tmp_path / "link.jsonl").symlink_to(data)
    monkeypatch.chdir(tmp_path)  # (restored after the test)
    err = _refused(
        [
            "inspect",
            "--input",
            "link.jsonl",
            "--format",
            "resume-jsonl",
            "--quarantine-out",
            "x.jsonl",
        ],
        capsys,
    )
    assert "--quarantine-out is --input" in err
    assert data.read_bytes() == before


def test_a_dataset_over_its_own_input_is_refused(tmp_path, capsys):
    folder = tmp_path / "raw"
    folder.mkdir()
    data = _jsonl(folder / "x.jsonl")
    err = _refused(
        [
            "shard",
            "--format",
            "resume-jsonl",
            "--input",
            str(data),
            "--out",
            str(tmp_path),
            "--name",
            "raw",
        ],
        capsys,
    )
    assert "--out/--name contains --input" in err
    assert sorted(p.name for p in folder.iterdir()) == ["x.jsonl"]
    # a parent vocabulary inside the dataset folder it would be written to
    err = _refused(
        [
            "shard",
            "--format",
            "resume-jsonl",
            "--input",
            str(data),
            "--out",
            str(tmp_path),
            "--name",
            "new",
            "--vocab",
            str(tmp_path / "new" / "vocab.json"),
        ],
        capsys,
    )
    assert "contains --vocab" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["pretrain", "--data", "{d}", "--out", "{d}"], "--out is --data"),
        (["pretrain", "--data", "{d}", "--out", "{d}/run"], "--out lies inside --data"),
        (
            ["finetune", "--data", "{d}/data", "--base", "{d}/run/package", "--out", "{d}/run"],
            "--out contains --base",
        ),
        (
            ["export", "--run", "{d}", "--package", "{d}/checkpoints/x"],
            "--package lies inside --run",
        ),
        (["export", "--run", "{d}/run", "--package", "{d}"], "--package contains --run"),
    ],
)
def test_training_outputs_over_their_inputs_are_refused(tmp_path, capsys, argv, message):
    argv = [a.replace("{d}", str(tmp_path)) for a in argv]
    assert message in _refused(argv, capsys)


def test_writes_never_replace_a_device(tmp_path, capsys):
    err = _refused(
        [
            "synth",
            "--preset",
            "nlsy79",
            "--people",
            "10",
            "--out",
            "/dev/full",
            "--layout",
            "resume-jsonl",
        ],
        capsys,
    )
    assert "/dev/full" in err and "not a regular file" in err
    assert Path("/dev/full").is_char_device()
    # the library's own atomic write refuses too (Python callers do not pass the CLI's check)
    with (
        pytest.raises(StructuralError, match="not a regular file"),
        storage.open_atomic("/dev/null") as handle,
    ):
        handle.write(b"x")
    assert Path("/dev/null").is_char_device()
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(StructuralError, match="not a regular file"):
        storage.write_bytes_atomic(str(fifo), b"x")


def test_a_folder_that_is_not_a_career_code_folder_is_not_replaced(tmp_path, capsys):
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("years of work")
    err = _refused(["synth", "--preset", "nlsy79", "--people", "10", "--out", str(home)], capsys)
    assert "holds other files (thesis.tex)" in err
    assert (home / "thesis.tex").read_text() == "years of work"
    # a career-code folder is replaced (rerunning synth into the same folder works)
    argv = ["synth", "--preset", "nlsy79", "--people", "10", "--out", str(tmp_path / "cc")]
    assert main(argv) == 0 and main(argv) == 0


def test_a_write_error_exits_2_naming_the_target_and_leaves_nothing(tmp_path):
    """A full disk, as the kernel reports it to a process over its file-size limit (EFBIG);
    ENOSPC takes the same path."""

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    proc = subprocess.run(
        [
            CAREER,
            "synth",
            "--preset",
            "nlsy79",
            "--people",
            "300",
            "--layout",
            "resume-jsonl",
            "--out",
            "out.jsonl",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        preexec_fn=limit,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "out.jsonl: cannot write: File too large" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- credentials
@pytest.mark.parametrize(
    "url",
    [
        "s3://AKIAEXAMPLE:abc/def@bucket/ok.csv",
        "s3://AKIAEXAMPLE:a/b/c+d=@bucket/ok.csv",
        "s3://user@bucket/ok.csv",
        "gs://k:s%2Fx@bucket/ok.csv",
    ],
)
def test_credentials_in_a_url_are_refused_and_redacted_whatever_they_hold(url, capsys):
    secret = url.split("://", 1)[1].split("@", 1)[0]
    with pytest.raises(StructuralError, match="credentials inside a URL are refused") as error:
        storage.filesystem(url)
    assert secret not in str(error.value)
    assert secret not in storage.redact(f"failed on {url} and {url}")
    err = _refused(["inspect", "--input", url, "--format", "panel"], capsys)
    assert "credentials inside a URL are refused" in err and secret not in err


def test_a_path_with_an_at_sign_is_not_taken_for_credentials():
    assert storage.redact("s3://bucket/v1@2/x.csv") == "s3://bucket/v1@2/x.csv"
    assert storage.filesystem("/tmp/a@b")[1] == "/tmp/a@b"


def test_mask_secrets_masks_by_key_name_at_any_depth(monkeypatch):
    monkeypatch.setenv("AWS_SESSION_TOKEN", "session-token-value")
    options = {
        "key": "AKIAKEYID",
        "client_kwargs": {
            "endpoint_url": "http://127.0.0.1:9000",
            "headers": {"Authorization": "Bearer tok/abc+def"},
        },
        "config_kwargs": {"s3": {"aws_session_token": "nested-token"}},
        "credentials": {"refresh": "refresh-value", "list": ["in-a-list"]},
        "Access-Key-Id": "header-style-id",
        "anon": False,
    }
    text = " ".join(
        [
            "AKIAKEYID",
            "Bearer tok/abc+def",
            "nested-token",
            "refresh-value",
            "in-a-list",
            "header-style-id",
            "session-token-value",
            "http://127.0.0.1:9000",
        ]
    )
    masked = storage.mask_secrets(text, options)
    assert masked.count("***") == 7 and "http://127.0.0.1:9000" in masked
    shown = storage.masked_options(options)
    assert shown["client_kwargs"]["headers"]["Authorization"] == "***"
    assert shown["client_kwargs"]["endpoint_url"] == "http://127.0.0.1:9000"
    assert shown["credentials"] == {"refresh": "***", "list": ["***"]} and shown["anon"] is False


def test_an_unreachable_object_store_exits_2_naming_the_url(monkeypatch, capsys):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    options = json.dumps(
        {"key": "k", "secret": "sec/ret+value", "config_kwargs": {"retries": {"max_attempts": 1}}}
    )
    err = _refused(
        [
            "inspect",
            "--input",
            "s3://bucket/ok.csv",
            "--format",
            "panel",
            "--storage-options",
            options,
        ],
        capsys,
    )
    assert "object store" in err and "http://127.0.0.1:9/bucket/ok.csv" in err
    assert "sec/ret+value" not in err


# ----------------------------------------------------------------------------- storage
def test_a_symlink_loop_is_not_retried_as_transient(tmp_path, caplog):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    calls = []

    def read() -> bytes:
        calls.append(1)
        return loop.read_bytes()

    with pytest.raises(OSError, match="Too many levels of symbolic links"):
        storage.retry(read, str(loop))
    assert len(calls) == 1 and "transient" not in caplog.text


# ----------------------------------------------------------------------------- files not trusted
def _manifest_with(path: str, split: str = "train") -> str:
    shard = {
        "split": split,
        "path": path,
        "bytes": 1,
        "sha256": "",
        "people": 1,
        "tokens": 1,
        "blocks": 1,
    }
    return json.dumps(
        {
            "name": "x",
            "shards": [shard],
            "splits": {},
            "totals": {},
            "vocab_hash": "",
            "parent_hash": None,
            "fields": {},
            "input": {},
            "config": {},
            "code_version": "",
            "format_version": 1,
        }
    )


@pytest.mark.parametrize(
    "path",
    [
        "/etc/passwd",
        "../other/train/shard-000000.tar",
        "train/../../x.tar",
        "s3://elsewhere/train/shard-000000.tar",
        "valid/shard-000000.tar",
        "train/",
    ],
)
def test_a_manifest_pointing_outside_its_dataset_is_refused(path):
    with pytest.raises(StructuralError, match="refusing a manifest that points elsewhere"):
        Manifest.from_json(_manifest_with(path), "manifest.json")
    assert Manifest.from_json(_manifest_with("train/shard-000000.tar"), "m").shards


def test_a_block_declaring_a_huge_payload_is_refused_before_allocating():
    block = encode_block(
        ["a", "b"], np.array([2, 1]), {"job": np.array([1, 2, 3])}, {"job": np.dtype(np.uint8)}
    )
    (header_len,) = struct.unpack_from("<I", block, 4)
    where = 8 + header_len
    bomb = block[:where] + struct.pack("<Q", 2**40) + block[where + 8 :]
    with pytest.raises(ValueError, match="over the .*-byte cap"):
        decode_block(bomb)
    lying = block[:where] + struct.pack("<Q", MAX_PAYLOAD_BYTES - 1) + block[where + 8 :]
    with pytest.raises(ValueError, match="does not decompress to its declared size"):
        decode_block(lying)
    assert decode_block(block).num_people == 2


def test_nan_split_fractions_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(
            [
                "synth",
                "--preset",
                "nlsy79",
                "--out",
                str(tmp_path / "x"),
                "--split-fractions",
                "nan,0.5,0.5",
            ]
        )
    assert exit_.value.code == 2 and "finite" in capsys.readouterr().err
    with pytest.raises(ValueError, match="finite"):
        write_layout([], str(tmp_path / "y"), "career-code", (float("nan"), 0.5, 0.5))


# ----------------------------------------------------------------------------- dataset identity
def test_swapping_the_splits_contents_is_another_input(tmp_path):
    """The input identity hashes each split's files with the split's name: swapping the train and
    valid files' contents once kept the identity, and the job reported the old dataset complete."""
    from data_shards.inputs import InputSpec, input_digest, plan_blocks

    contents = {
        "train": ("11 12 13\n21 22\n", "2001 2002 2003\n2001 2002\n"),
        "valid": ("31 32\n", "2005 2006\n"),
    }
    digests = []
    for name, order in (("a", ("train", "valid")), ("b", ("valid", "train"))):
        folder = tmp_path / name
        folder.mkdir()
        for split, source in zip(("train", "valid"), order, strict=True):
            (folder / f"{split}.job").write_text(contents[source][0])
            (folder / f"{split}.year").write_text(contents[source][1])
        spec = InputSpec(format="career-code", url=str(folder))
        digests.append(input_digest(spec, plan_blocks(spec)))
    assert digests[0] != digests[1]
    again = InputSpec(format="career-code", url=str(tmp_path / "a"))
    assert input_digest(again, plan_blocks(again)) == digests[0]  # and it is stable


def test_storage_options_can_come_from_a_file_instead_of_argv(tmp_path, capsys):
    from cluster.cli import COMMANDS, build_parser

    path = tmp_path / "options.json"
    path.write_text(json.dumps({"key": "k", "secret": "from/a+file"}))
    namespace = build_parser().parse_args(
        ["inspect", "--input", "x.csv", "--format", "panel", "--storage-options", f"@{path}"]
    )
    typed = COMMANDS["inspect"].settings_from(namespace)
    assert typed.source.storage.storage_options == {"key": "k", "secret": "from/a+file"}
    with pytest.raises(SystemExit) as exit_:
        main(
            [
                "inspect",
                "--input",
                "x.csv",
                "--format",
                "panel",
                "--storage-options",
                f"@{tmp_path / 'missing.json'}",
            ]
        )
    assert exit_.value.code == 2 and "cannot read" in capsys.readouterr().err


# ----------------------------------------------------------------------------- model packages
class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_package_is_safetensors_and_a_pickle_in_its_place_runs_nothing(tmp_path):
    """Packages hold no pickle: weights are safetensors, the rest JSON. A pickle put in place of
    the weights is refused as unreadable, and its payload never runs."""
    import pickle

    import torch

    from data_shards.vocab import Vocabulary
    from trainer.models.career import build_model
    from trainer.package import FILES, load_model, write_package

    sizes = {
        "job": 9,
        "year": 7,
        "education": 5,
        "location": 5,
        "gender": 4,
        "ethnicity": 4,
        "birth_year": 6,
    }
    vocab = Vocabulary(
        {
            name: ["<pad>", "<bos>", "<unk>", *[f"{name}{i}" for i in range(n - 3)]]
            for name, n in sizes.items()
        }
    )
    model = build_model(sizes, "tiny")
    package = tmp_path / "package"
    write_package(str(package), model.state_dict(), model.config, vocab, {}, "sha")
    assert sorted(p.name for p in package.iterdir()) == sorted(FILES)
    assert all(p.suffix in (".json", ".safetensors") for p in package.iterdir())
    loaded = load_model(str(package))
    assert all(torch.equal(loaded.model.state_dict()[k], v) for k, v in model.state_dict().items())

    marker = tmp_path / "payload-ran"
    (package / "model.safetensors").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(StructuralError, match="model.safetensors is unreadable"):
        load_model(str(package))
    assert not marker.exists()


def test_sigterm_leaves_no_temporary_file(tmp_path):
    """`career jobs stop` (or a cluster taking its node back) sends SIGTERM: the command stops
    with exit 143 and its atomic write removes its temporary file; nothing is half-written."""
    out = tmp_path / "big.jsonl"
    proc = subprocess.Popen(
        [
            CAREER,
            "synth",
            "--preset",
            "resumes",
            "--people",
            "2000000",
            "--layout",
            "resume-jsonl",
            "--out",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob("big.jsonl.tmp*")) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "terminated (SIGTERM)" in stderr, stderr
    assert list(tmp_path.iterdir()) == []
