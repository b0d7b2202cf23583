"""The import direction of docs/ARCHITECTURE.md: cluster -> eval -> trainer -> data_shards.

Inside `data_shards`, `trainer` and `cluster` too, the parts are layered (`LAYERS`): a module
imports its own layer or a lower one, never a back-arrow up. No module imports from the namespace of a package
whose `__init__` imports that module (a cycle through the `__init__`).

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


#: Inside a package, its parts in layers, lowest first: a module may import a module of its own
#: layer or of a lower one. A part is a module or a subpackage (all of its modules); the package's
#: own `__init__` is above every layer. A new module is declared here (`test_every_module_...`).
LAYERS: dict[str, list[tuple[str, set[str]]]] = {
    "data_shards": [
        # the contracts: record, vocabulary, manifest, block encoding, splits, file access
        (
            "contracts",
            {
                "errors",
                "schema",
                "storage",
                "blocks",
                "vocab",
                "splits",
                "cutoff",
                "manifest",
                "quarantine",
                "encode",
                "tasks",  # the one ray.wait loop (Ray imported only when it runs)
            },
        ),
        # records in and out: the readers and formats, the simulator, writers, a dataset read back
        ("records", {"readers", "synth", "formats", "inputs", "writers", "summary", "dataset"}),
        # datasets made and streamed: the sharding job, the streaming loader
        ("datasets", {"shard", "stream"}),
    ],
    "trainer": [
        # the model kinds, pure nn.Modules, and their registry
        ("models", {"models"}),
        # what a run is made of, no DeepSpeed: config, devices, ranks, files of checkpoints and
        # packages, unpickling, growing a model to a dataset
        (
            "parts",
            {
                "accelerator",
                "rng",
                "distributed",
                "monitor",
                "config",
                "schedule",
                "safe_load",
                "checkpoint_store",
                "package",
                "finetune",
                "preemption",
            },
        ),
        # a run's machinery: the DeepSpeed engine, the run context, updates, validation,
        # checkpointing and resuming, export
        (
            "run",
            {
                "engine",
                "context",
                "step",
                "meter",
                "evaluation",
                "elastic",
                "checkpointer",
                "export",
            },
        ),
        # the entry points: the training loop and its launchers, closed-form fits, the preflight
        ("entry points", {"loop", "relay", "launch", "closed_form", "preflight"}),
    ],
    "cluster": [
        # what every command shares: settings and flags, terminal output, Ray, guards, the step
        # runner, the spec files of run and scale
        (
            "parts",
            {
                "flags",
                "settings",
                "data_settings",
                "train_settings",
                "console",
                "ray_session",
                "guards",
                "steps",
                "specs",
                "spec_files",
            },
        ),
        # one command each: its settings, one call, its terminal output
        (
            "jobs",
            {
                "synth_job",
                "shard_job",
                "train_job",
                "evaluate_job",
                "predict_job",
                "explain_job",
                "forecast_job",
                "wages_job",
                "report_job",
            },
        ),
        # the commands that orchestrate others: career run, career scale, career submit and jobs
        ("studies", {"run", "scale", "submit"}),
        # the command line: the table of subcommands and main
        ("commands", {"commands", "cli"}),
    ],
}


def layer_of(module: str) -> int | None:
    """The index of `module`'s layer in its package (the package itself: above them all)."""
    package, *rest = module.split(".")
    layers = LAYERS[package]
    if not rest:
        return len(layers)
    return next((i for i, (_, parts) in enumerate(layers) if rest[0] in parts), None)


def back_arrows(package: str) -> list[tuple[str, str]]:
    """(module, what it imports) of `package` that point to a higher layer."""
    return sorted(
        (module, target)
        for module, targets in GRAPH.items()
        if module.split(".")[0] == package
        for target in targets
        if target.split(".")[0] == package and layer_of(target) > layer_of(module)
    )


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_every_module_has_a_layer(package):
    undeclared = [m for m in MODULES if m.split(".")[0] == package and layer_of(m) is None]
    assert not undeclared, f"declare them in LAYERS[{package!r}]"


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_no_back_arrow_inside_a_package(package):
    names = [name for name, _ in LAYERS[package]]
    assert not back_arrows(package), f"layers, lowest first: {names}"


def test_the_layer_check_finds_a_back_arrow():
    GRAPH["trainer.models.output"].add("trainer.config")
    GRAPH["data_shards.vocab"].add("data_shards.stream.loader")
    GRAPH["cluster.steps"].add("cluster.run.job")
    try:
        assert ("trainer.models.output", "trainer.config") in back_arrows("trainer")
        assert ("data_shards.vocab", "data_shards.stream.loader") in back_arrows("data_shards")
        assert ("cluster.steps", "cluster.run.job") in back_arrows("cluster")
    finally:
        GRAPH["trainer.models.output"] = imports_of("trainer.models.output")
        GRAPH["data_shards.vocab"] = imports_of("data_shards.vocab")
        GRAPH["cluster.steps"] = imports_of("cluster.steps")


def _reached(module: str) -> set[str]:
    """Every module of ours that importing `module` runs."""
    seen, todo = set(), [module]
    while todo:
        for target in GRAPH.get(todo.pop(), ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def through_init(module: str, tree: ast.AST) -> list[str]:
    """The packages `module` (parsed as `tree`) imports names from while their `__init__`, which
    imports `module`, is still running: `from pkg import sub` inside pkg, pkg/__init__ -> module."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            source = _resolve(module, node, MODULES[module].name == "__init__.py")
            package = MODULES.get(source)
            if (
                package is not None
                and package.name == "__init__.py"
                and module.startswith(source + ".")
                and module in _reached(source)
            ):
                found.append(source)
    return found


def test_no_import_through_a_packages_init():
    bad = {}
    for module, path in MODULES.items():
        found = through_init(module, ast.parse(path.read_text(), filename=str(path)))
        if found:
            bad[module] = found
    assert not bad, "import the submodule itself (from pkg.sub import name)"


def test_the_init_check_finds_an_import_through_the_init():
    planted = ast.parse("from eval.report import plots")
    assert through_init("eval.report.sections", planted) == ["eval.report"]


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
    (
        "waiting on Ray tasks",
        "data_shards.tasks",
        lambda node: isinstance(node, ast.Call) and _dotted(node.func) == "ray.wait",
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


#: What a module of `cluster` never does itself: compute with tensors or arrays, or open a model
#: package, a dataset or a split. A command turns settings into one call of an `eval` use case (or
#: a `trainer` / `data_shards` entry point) and prints what it returns.
NUMERIC_LIBRARIES = {"torch", "numpy", "pyarrow", "pandas", "scipy", "sklearn"}
MODEL_AND_DATA_CALLS = {
    "load_model",
    "load_dataset",
    "load_package",
    "read_split",
    "CareerLoader",
    "read_scores",
    "build_model",
    "model_for",
    "score_split",
}


def logic_in(tree: ast.AST) -> list[str]:
    """The numeric imports and the model or data calls in a parsed module."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] in NUMERIC_LIBRARIES]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            if (node.module or "").split(".")[0] in NUMERIC_LIBRARIES:
                found.append(node.module)
        elif isinstance(node, ast.Call):
            name = _dotted(node.func).rsplit(".", 1)[-1]
            if name in MODEL_AND_DATA_CALLS:
                found.append(f"{name}()")
    return found


def test_cluster_holds_no_model_data_or_metric_logic():
    bad = {}
    for module, path in MODULES.items():
        if module.split(".")[0] == "cluster":
            found = logic_in(ast.parse(path.read_text(), filename=str(path)))
            if found:
                bad[module] = found
    assert not bad, "move it into eval/, trainer/ or data_shards/ and call that"


def test_the_logic_check_finds_numeric_code_and_a_model_load():
    planted = ast.parse(
        "import numpy as np\nfrom torch import nn\nloaded = trainer.package.load_model(url)"
    )
    assert logic_in(planted) == ["numpy", "torch", "load_model()"]
