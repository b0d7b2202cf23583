"""A tampered run folder runs no code, and no path read from a file is trusted.

- A checkpoint file whose pickle would run a payload (its `__reduce__` creates a marker file) is
  refused on resume (DeepSpeed's checkpoint-engine hook, and the universal format's files, which
  DeepSpeed reads without it), on export (stage 0, and zero_to_fp32 through `career export`:
  exit 2) and by the universal conversion (ds_to_universal, in its subprocess). The error names
  the file and the refused global; the marker never appears. Clean checkpoints still resume
  (also from the universal format) and export.
- `latest.json` / `best.json` naming a path, object-store keys that leave their tag, and the
  staging folder of a remote run (private, unique, made only when used).

Real DeepSpeed on CPU: one ZeRO-1 rank in this process (gloo), the tiny preset.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from data_shards import storage
from data_shards.errors import StructuralError
from data_shards.vocab import SPECIALS, Vocabulary
from trainer import engine as ds_engine
from trainer import rng, safe_load
from trainer.checkpoint_store import CheckpointStore
from trainer.checkpointer import Checkpointer
from trainer.config import OptimConfig, TrainConfig
from trainer.distributed import run_info
from trainer.elastic import ResumeSource
from trainer.export import export_run
from trainer.models.career import build_model
from trainer.package import load_model
from trainer.safe_load import UnsafeCheckpointError
from trainer.step import NLLModule, run_update

#: DeepSpeed checkpoints written and resumed (torchrun, conversions): minutes in all
pytestmark = pytest.mark.slow

CAREER = str(Path(sys.executable).with_name("career"))
TAG = "step0000001"
MODEL_STATES, OPTIM_STATES = (
    "mp_rank_00_model_states.pt",
    "zero_pp_rank_0_mp_rank_00_optim_states.pt",
)
REFUSED = "refused to unpickle global exec"  # torch names builtins.exec `exec`
VOCAB = Vocabulary(
    {
        "job": [*SPECIALS, *(f"j{i}" for i in range(12))],
        "year": [*SPECIALS, *(str(y) for y in range(2000, 2008))],
    }
)
NAMES = ("inputs", "targets", "year")


class Payload:
    """What a tampered file holds: an ordinary unpickler runs `exec`, which creates `marker`."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def tamper(path: Path, marker: Path) -> None:
    """Rewrite checkpoint file `path`: all it held, plus the payload."""
    state = safe_load.load(path)
    torch.save(
        {**state, "payload": Payload(marker)}
        if isinstance(state, dict)
        else [state, Payload(marker)],
        path,
    )


@pytest.fixture(scope="module")
def one_rank(single_process_group):
    """torch.distributed on one rank in this process (gloo), as DeepSpeed needs it."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {
            "RANK": "0",
            "LOCAL_RANK": "0",
            "WORLD_SIZE": "1",
            "LOCAL_WORLD_SIZE": "1",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": "29547",
            "DS_ACCELERATOR": "cpu",
        }.items():
            patch.setenv(name, value)
        yield run_info()


def new_engine(load_universal: bool = False):
    torch.manual_seed(0)
    model = build_model({n: VOCAB.size(n) for n in ("job", "year")}, "tiny", covariates=("year",))
    config = TrainConfig(
        preset="tiny",
        zero_stage=1,
        tokens_per_update=100,
        updates=2,
        optim=OptimConfig(lr=0.003, warmup_updates=0),
    ).resolve(1, False)
    engine, _, _ = ds_engine.initialize(NLLModule(model), config, 1, load_universal)
    return engine, model


@pytest.fixture(scope="module")
def clean_run(one_rank, tmp_path_factory) -> Path:
    """A run folder: one ZeRO-1 checkpoint after one update, its sidecar and `latest.json`, and
    the checkpoint in the universal format in `universal/`."""
    out = tmp_path_factory.mktemp("safety") / "run"
    engine, model = new_engine()
    torch.manual_seed(1)
    shape = (4, 5)
    batch = {
        "inputs": torch.randint(1, VOCAB.size("job"), shape),
        "targets": torch.randint(3, VOCAB.size("job"), shape),
        "year": torch.randint(3, VOCAB.size("year"), shape),
        "lengths": torch.full((4,), 5),
    }
    run_update(engine, [batch], one_rank, NAMES)
    client = {
        "step": 1,
        "tokens_seen": 20.0,
        "world_size": 1,
        "loader": [{"format": 1}],
        "rng": [rng.rng_state()],
        "vocab_hash": VOCAB.hash,
        "valid_history": [[1, 9.0]],
    }
    store = CheckpointStore(str(out))
    engine.save_checkpoint(store.local, tag=TAG, client_state=client, save_latest=False)
    sidecar = {
        "model_config": model.config.to_dict(),
        "vocab_hash": VOCAB.hash,
        "step": 1,
        "dataset_manifest_sha256": "0" * 64,
        "valid_perplexity": 9.0,
    }
    store.write_sidecar(TAG, sidecar, VOCAB)
    store.seal(TAG, 1)  # its record (complete.json), as Checkpointer.save writes it
    store.set_latest(TAG, 1)
    ds_engine.to_universal(store.local, TAG, str(out / "universal"))
    return out


@pytest.fixture
def run(clean_run, tmp_path) -> Path:
    """A copy of the clean run, to tamper with."""
    return Path(shutil.copytree(clean_run, tmp_path / "run"))


class Loader:
    def load_states(self, states) -> str:
        return "exact"


def resume(out: Path, info, universal: bool = False):
    """`Checkpointer.resume` (what training runs) from `out`, on a fresh engine."""
    engine, _ = new_engine(load_universal=universal)
    fake_run = SimpleNamespace(
        out_url=str(out),
        storage_options=None,
        info=info,
        data=SimpleNamespace(vocab=VOCAB),
        config=SimpleNamespace(seed=0),
    )
    folder = out / ("universal" if universal else "checkpoints")
    state, message = Checkpointer(fake_run, Loader()).resume(
        engine, ResumeSource(TAG, str(folder), universal)
    )
    return engine, state, message


# -- A: checkpoints are unpickled weights-only ----------------------------------------------------
def test_the_payload_runs_under_an_ordinary_unpickler(run, tmp_path):
    """The tampered files of these tests are live: what every refusal below prevents."""
    marker = tmp_path / "ran"
    tamper(run / "checkpoints" / TAG / MODEL_STATES, marker)
    torch.load(run / "checkpoints" / TAG / MODEL_STATES, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("name", [MODEL_STATES, OPTIM_STATES])
def test_a_tampered_checkpoint_is_refused_on_resume(run, one_rank, tmp_path, name):
    marker = tmp_path / "ran"
    tamper(run / "checkpoints" / TAG / name, marker)
    with pytest.raises(UnsafeCheckpointError, match=rf"{TAG}/{name}: {REFUSED}"):
        resume(run, one_rank)
    assert not marker.exists()


def test_every_engine_reads_through_the_safe_checkpoint_engine(run, one_rank, tmp_path):
    """DeepSpeed's own `load_checkpoint`, called outside weights-only mode: the hook refuses."""
    marker = tmp_path / "ran"
    tamper(run / "checkpoints" / TAG / MODEL_STATES, marker)
    engine, _ = new_engine()
    assert safe_load.FORCE not in os.environ
    with pytest.raises(UnsafeCheckpointError, match=rf"{TAG}/{MODEL_STATES}: {REFUSED}"):
        engine.load_checkpoint(str(run / "checkpoints"), tag=TAG)
    assert not marker.exists()


def test_a_tampered_universal_checkpoint_is_refused_on_resume(run, one_rank, tmp_path):
    """The universal format's per-parameter files are read by DeepSpeed's optimizer with
    `torch.load(weights_only=False)` and no hook: weights-only mode covers them."""
    marker = tmp_path / "ran"
    moments = sorted((run / "universal" / TAG / "zero").glob("*/exp_avg.pt"))[0]
    tamper(moments, marker)
    with pytest.raises(
        UnsafeCheckpointError, match=rf"{moments.parent.name}/exp_avg.pt: {REFUSED}"
    ):
        resume(run, one_rank, universal=True)
    assert not marker.exists()
    assert safe_load.FORCE not in os.environ  # the mode ends with the load


def test_a_tampered_checkpoint_is_refused_by_the_universal_conversion(run, tmp_path):
    marker = tmp_path / "ran"
    tamper(run / "checkpoints" / TAG / OPTIM_STATES, marker)
    with pytest.raises(UnsafeCheckpointError, match=rf"{TAG}/{OPTIM_STATES}: {REFUSED}"):
        ds_engine.to_universal(str(run / "checkpoints"), TAG, str(tmp_path / "universal"))
    assert not marker.exists()


def test_a_tampered_checkpoint_is_refused_on_export(run, tmp_path):
    """`career export` of ZeRO-1 (zero_to_fp32): exit 2 with the file and the global."""
    marker = tmp_path / "ran"
    tamper(run / "checkpoints" / TAG / OPTIM_STATES, marker)
    # Whoever can rewrite a checkpoint file can rewrite its record: the record catches damage,
    # not an attacker, so the unpickling must refuse the payload by itself.
    CheckpointStore(str(run)).seal(TAG, 1)
    package = tmp_path / "package"
    done = subprocess.run(
        [CAREER, "export", "--run", str(run), "--package", str(package)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"{TAG}/{OPTIM_STATES}: {REFUSED}" in done.stderr
    assert not marker.exists() and not package.exists()


def test_a_tampered_stage0_checkpoint_is_refused_on_export(tmp_path):
    """ZeRO stage 0 keeps whole weights in the model-states file, read by us directly."""
    folder, marker = tmp_path / "checkpoints" / TAG, tmp_path / "ran"
    folder.mkdir(parents=True)
    torch.save({"module": {"w": torch.zeros(2)}, "payload": Payload(marker)}, folder / MODEL_STATES)
    with pytest.raises(UnsafeCheckpointError, match=rf"{TAG}/{MODEL_STATES}: {REFUSED}"):
        ds_engine.consolidated_state_dict(str(tmp_path / "checkpoints"), TAG)
    assert not marker.exists()


@pytest.mark.parametrize("universal", [False, True], ids=["zero1", "universal"])
def test_a_clean_checkpoint_still_resumes(clean_run, one_rank, universal):
    engine, state, message = resume(clean_run, one_rank, universal)
    assert state.step == 1 and state.valid_history == [[1, 9.0]]
    assert message.startswith(f"resumed from {TAG}")
    saved = ds_engine.consolidated_state_dict(str(clean_run / "checkpoints"), TAG)
    loaded = engine.module.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in saved.items())


def test_a_clean_checkpoint_still_exports(clean_run, tmp_path):
    target = export_run(str(clean_run), package_url=str(tmp_path / "package"))
    package = load_model(target)
    saved = ds_engine.consolidated_state_dict(str(clean_run / "checkpoints"), TAG)
    exported = package.model.state_dict()
    assert package.config["checkpoint"] == TAG
    assert all(torch.equal(exported[k.removeprefix("model.")], v) for k, v in saved.items())


def test_only_the_allow_list_is_accepted(tmp_path):
    """A global outside the allow-list is refused even when harmless; the allowed ones load."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    torch.save({"scaler": LossScaler(1.0), "stage": ZeroStageEnum.gradients}, tmp_path / "ok.pt")
    loaded = safe_load.load(tmp_path / "ok.pt")
    assert loaded["stage"] is ZeroStageEnum.gradients and loaded["scaler"].cur_scale == 1.0
    torch.save({"path": Path("x")}, tmp_path / "other.pt")
    with pytest.raises(
        UnsafeCheckpointError, match=r"other.pt: refused to unpickle global pathlib"
    ):
        safe_load.load(tmp_path / "other.pt")


# -- B: no path from a file is trusted ------------------------------------------------------------
@pytest.mark.parametrize("pointer", ["latest.json", "best.json"])
def test_a_pointer_naming_a_path_is_refused(store, pointer):
    run = store.url("run")
    url = storage.join(run, "checkpoints", pointer)
    payload = {"tag": "../../etc", "step": 1, "valid_perplexity": 1.0}
    storage.write_bytes_atomic(url, json.dumps(payload).encode(), store.storage_options)
    checkpoints = CheckpointStore(run, store.storage_options)
    with pytest.raises(StructuralError, match=r"'\.\./\.\./etc' is not a checkpoint tag"):
        checkpoints.latest() if pointer == "latest.json" else checkpoints.best()
    with pytest.raises(StructuralError, match="is not a checkpoint tag"):
        export_run(run, storage_options=store.storage_options)
    with pytest.raises(StructuralError, match="is not a checkpoint tag"):
        export_run(run, tag="../step0000001", storage_options=store.storage_options)


@pytest.fixture
def s3_run(s3_endpoint):
    import s3fs

    options = {
        "client_kwargs": {"endpoint_url": s3_endpoint},
        "key": "testing",
        "secret": "testing",
    }
    bucket = f"safety-{uuid.uuid4().hex[:12]}"
    fs = s3fs.S3FileSystem(**options)
    fs.mkdir(bucket)
    return fs, f"s3://{bucket}/run", options


@pytest.mark.parametrize("key", ["../../../../escape", "zero/../../escape", "/escape"])
def test_a_remote_key_leaving_its_tag_is_refused(s3_run, key):
    """S3 keys may hold `..` and `//`: joined to the staging folder they would write anywhere."""
    fs, run, options = s3_run
    tag = f"{run.removeprefix('s3://')}/checkpoints/{TAG}"
    fs.pipe(f"{tag}/{MODEL_STATES}", b"weights")
    fs.pipe(f"{tag}/{key}", b"planted")
    store = CheckpointStore(run, options)
    with pytest.raises(StructuralError, match="refused checkpoint key"):
        store.download(TAG)
    assert not list(Path(store.local).rglob("*"))  # every key is checked before any is fetched
    store.close()


def test_the_staging_folder_is_private_and_unique(s3_run, one_rank, tmp_path, monkeypatch):
    """Not a name computed from the URL (another user could make it first, or a link there):
    a fresh 0700 folder per store, made when first used; training's is removed when training
    is done with it (a Ray Train worker is killed without running exit handlers)."""
    _, run, options = s3_run
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where mkdtemp makes folders
    first, second = CheckpointStore(run, options), CheckpointStore(run, options)
    assert not list(tmp_path.iterdir())  # opening a store creates nothing
    folders = [Path(first.local), Path(second.local)]
    assert folders[0] != folders[1] and all(f.parent == tmp_path for f in folders)
    assert Path(first.local) == folders[0]  # one folder for the life of the store
    for folder in folders:
        assert folder.is_dir() and not folder.is_symlink()
        assert folder.stat().st_mode & 0o777 == 0o700 and folder.stat().st_uid == os.getuid()
    first.close()
    second.close()
    assert not any(folder.exists() for folder in folders)
    fake_run = SimpleNamespace(out_url=run, storage_options=options, info=one_rank)
    checkpointer = Checkpointer(fake_run, Loader())
    staging = Path(checkpointer.store.local)
    assert staging.parent == tmp_path and staging.stat().st_mode & 0o777 == 0o700
    del checkpointer
    gc.collect()
    assert not staging.exists()
