"""The import direction of ARCHITECTURE.md: cluster -> eval -> trainer -> data_shards.

Checked two ways: an AST walk over every module of the four packages (every import counts, also
one inside a function or under TYPE_CHECKING, since each is a dependency), and real imports in
a fresh interpreter for what must stay light (no DeepSpeed, no Ray).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("data_shards", "trainer", "eval", "cluster")
#: package -> the packages of ours it must never import
FORBIDDEN = {
    "data_shards": {"trainer", "eval", "cluster"},
    "trainer": {"eval", "cluster"},
    "eval": {"cluster"},
    "cluster": set(),
}


def module_files() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


MODULES = module_files()


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def imports_of(module: str) -> set[str]:
    """Modules of ours that `module` imports (a `from pkg import sub` names the submodule)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), filename=str(path))
    targets: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(module, node, path.name == "__init__.py")
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                targets.add(sub if sub in MODULES else source)
    return {t for t in targets if t.split(".")[0] in PACKAGES}


GRAPH = {module: imports_of(module) for module in MODULES}


def test_the_walk_sees_every_package():
    assert {m.split(".")[0] for m in MODULES} == set(PACKAGES)
    assert "trainer.loop" in GRAPH and "data_shards.vocab" in GRAPH["trainer.models.career"]


@pytest.mark.parametrize("package", PACKAGES)
def test_import_direction(package):
    bad = {
        module: sorted(t for t in targets if t.split(".")[0] in FORBIDDEN[package])
        for module, targets in GRAPH.items()
        if module.split(".")[0] == package
    }
    assert not {m: t for m, t in bad.items() if t}, "imports against the direction"


def test_nothing_imports_cluster_but_cluster():
    users = {
        m for m, targets in GRAPH.items() if any(t.split(".")[0] == "cluster" for t in targets)
    }
    assert all(m.split(".")[0] == "cluster" for m in users), sorted(users)


def _cycle() -> list[str] | None:
    """One import cycle among our modules, if there is any (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        stack.append(module)
        for target in sorted(GRAPH.get(module, ())):
            if target == module or target not in GRAPH:
                continue
            if state.get(target) == 1:
                return stack[stack.index(target) :] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        stack.pop()
        state[module] = 2
        return None

    for module in sorted(GRAPH):
        if module not in state:
            found = visit(module)
            if found:
                return found
    return None


def test_no_import_cycle():
    assert _cycle() is None, " -> ".join(_cycle() or [])


def test_the_cycle_finder_finds_a_cycle():
    GRAPH["data_shards.vocab"].add("data_shards.storage")
    GRAPH["data_shards.storage"].add("data_shards.vocab")
    try:
        assert _cycle() is not None
    finally:
        GRAPH["data_shards.vocab"] = imports_of("data_shards.vocab")
        GRAPH["data_shards.storage"] = imports_of("data_shards.storage")


def imported_after(*modules: str) -> set[str]:
    code = f"import sys, {', '.join(modules)}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
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
    for module in ("trainer", "eval"):
        loaded = imported_after(module)
        assert not loaded & {"deepspeed", "ray", "cluster"}, module


def test_models_packages_and_every_eval_module_load_without_deepspeed_or_ray():
    light = ["trainer", "trainer.models.career", "trainer.package"]
    light += [m for m in MODULES if m.split(".")[0] == "eval"]
    loaded = imported_after(*light)
    assert not loaded & {"deepspeed", "ray", "cluster"}


#: Each cross-cutting fact has one home: (what, the module allowed to hold it, a test for it).
ONE_PLACE = [
    (
        "special ids",
        "data_shards.vocab",
        lambda node: (
            isinstance(node, ast.Assign)
            and any(
                isinstance(t, ast.Name | ast.Tuple) and {"PAD_ID", "BOS_ID", "UNK_ID"} & _names(t)
                for t in node.targets
            )
        ),
    ),
    (
        "starting Ray",
        "cluster.ray_session",
        lambda node: isinstance(node, ast.Call) and _dotted(node.func) == "ray.init",
    ),
    (
        "DS_ACCELERATOR",
        "trainer.accelerator",
        lambda node: isinstance(node, ast.Constant) and node.value == "DS_ACCELERATOR",
    ),
    (
        "the S3 endpoint variables",
        "data_shards.storage",
        lambda node: (
            isinstance(node, ast.Constant)
            and node.value in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")
        ),
    ),
    # A checkpoint is a pickle: one module reads them, weights-only with an allow-list.
    (
        "unpickling",
        "trainer.safe_load",
        lambda node: isinstance(node, ast.Call) and _dotted(node.func) in UNPICKLERS,
    ),
]
UNPICKLERS = {
    "torch.load",
    "torch.serialization.load",
    "pickle.load",
    "pickle.loads",
    "pickle.Unpickler",
    "cloudpickle.load",
    "cloudpickle.loads",
}


def _names(target: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else ""


@pytest.mark.parametrize(("what", "home", "found"), ONE_PLACE, ids=[w for w, _, _ in ONE_PLACE])
def test_one_place_for_each_cross_cutting_fact(what, home, found):
    holders = set()
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text())
        if any(found(node) for node in ast.walk(tree)):
            holders.add(module)
    assert holders == {home}, f"{what}: {sorted(holders)}"
