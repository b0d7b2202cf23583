"""The import direction of ARCHITECTURE.md: cluster -> eval -> trainer -> data_shards."""

import subprocess
import sys

import pytest


def imported_after(module: str) -> set[str]:
    code = f"import sys, {module}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    return {name.split(".")[0] for name in out.split()}


@pytest.mark.parametrize(
    "module",
    [
        "data_shards",
        "data_shards.readers",
        "data_shards.synth.generate",
        "data_shards.vocab",
        "data_shards.writers",
        "data_shards.summary",
    ],
)
def test_data_shards_imports_no_upper_layer(module):
    loaded = imported_after(module)
    assert not loaded & {"trainer", "eval", "cluster", "deepspeed", "torch", "ray"}


def test_trainer_and_eval_import_no_deepspeed_or_ray():
    for module in ("trainer", "eval.markov"):
        loaded = imported_after(module)
        assert not loaded & {"deepspeed", "ray", "cluster"}, module
