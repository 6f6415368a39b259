"""The package's rooms and who may enter them (docs/architecture.md), read from the source's import statements."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "hpc_ncsn"

SCIENCE = {"config", "rng", "data", "image_folder", "cifar10", "schedules", "planning", "audit", "model", "loss", "ema",
           "sampling", "solvers", "toy", "heldout", "stats"}
# Heavy libraries and the one place each may be imported from.
HOMES = {"accelerate": "train", "deepspeed": "train", "h5py": "samples.shards", "torch_fidelity": "evaluate",
         "submitit": "sweep"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, source: str | None = None) -> set[str]:
    """Every module `path` imports, absolute: 'torch', 'hpc_ncsn.config', ... (lazy imports included)."""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text() if source is None else source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1] if node.level > 1 else package
                prefix = ".".join(["hpc_ncsn", *[p for p in base if p]])
                if node.module:
                    found.add(f"{prefix}.{node.module}")
                else:
                    found |= {f"{prefix}.{alias.name}" for alias in node.names}
            else:
                found.add(node.module)
    return found


MODULES = {module_name(path): imports(path) for path in PACKAGE.rglob("*.py")}


def ours(imported: set[str]) -> set[str]:
    return {name.removeprefix("hpc_ncsn.") for name in imported if name.startswith("hpc_ncsn.")}


def test_the_science_modules_import_only_each_other():
    allowed = SCIENCE | {"errors", "files", "untrusted"}  # errors, atomic files, bounded reads: standard library
    for name in SCIENCE:
        assert ours(MODULES[name]) <= allowed, (name, ours(MODULES[name]) - allowed)


# The modules that parse a command line: they alone may import the CLI or take an argparse Namespace.
ENTRY_POINTS = {"__main__", "cli", "sweep.launch"}  # and the CLI package's modules (cli.*)


def is_entry_point(name: str) -> bool:
    return name in ENTRY_POINTS or name.startswith("cli.")


def test_samples_and_evaluate_never_import_training():
    for name, imported in MODULES.items():
        if name.startswith(("samples", "evaluate")):
            assert not any(m == "train" or m.startswith("train.") for m in ours(imported)), name


def test_no_module_but_an_entry_point_imports_the_cli():
    importers = {name for name, imported in MODULES.items()
                 if any(m == "cli" or m.startswith("cli.") for m in map(module_of, ours(imported)) if m)}
    assert {name for name in importers if not is_entry_point(name)} == set()


def module_of(imported: str) -> str | None:
    """The package module an imported name lives in: 'sweep.tasks.CURVE' → 'sweep.tasks', '__version__' → ''
    (the package itself); None for a name outside the package's files."""
    parts = imported.split(".")
    while parts:
        if ".".join(parts) in MODULES:
            return ".".join(parts)
        parts.pop()
    return "" if "" in MODULES else None


def import_graph() -> dict[str, set[str]]:
    """module → the package modules it imports, at the top or inside a function (lazy imports count)."""
    return {name: {target for m in ours(imported) if (target := module_of(m)) is not None and target != name}
            for name, imported in MODULES.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan), each as a sorted list."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_lazy_circle_and_passes_a_line():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    source = "def body():\n    from .status import read_status\n"  # a function-level import is an edge
    assert "hpc_ncsn.sweep.status" in imports_of_source(source, "sweep.tasks")


def imports_of_source(source: str, name: str) -> set[str]:
    path = PACKAGE.joinpath(*name.split(".")).with_suffix(".py")
    return imports(path, source)


def test_the_package_has_no_import_cycle_lazy_imports_included():
    assert cycles(import_graph()) == []


def test_no_library_function_takes_an_argparse_namespace():
    """Only the entry points see argparse; everything below them takes typed records or plain values."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if is_entry_point(module_name(path)):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                arguments = [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]
                for argument in arguments:
                    annotation = ast.unparse(argument.annotation) if argument.annotation else ""
                    if "Namespace" in annotation or argument.arg in ("args", "namespace"):
                        offenders.append(f"{module_name(path)}.{node.name}({argument.arg})")
    assert offenders == []


@pytest.mark.parametrize("library", sorted(HOMES))
def test_each_heavy_library_is_imported_in_one_room(library):
    users = {name for name, imported in MODULES.items() if any(m.split(".")[0] == library for m in imported)}
    assert users or library == "deepspeed"  # DeepSpeed comes in through Accelerate, in train/
    assert all(name == HOMES[library] or name.startswith(HOMES[library] + ".") for name in users), users


def test_no_module_is_imported_at_a_path_that_does_not_exist():
    for name, imported in MODULES.items():
        for module in ours(imported):
            path = PACKAGE.joinpath(*module.split("."))
            assert path.with_suffix(".py").is_file() or (path / "__init__.py").is_file() or \
                path.parent.with_suffix(".py").is_file() or (path.parent / "__init__.py").is_file(), \
                (name, module)  # the last two: `from .x import name` of a function, `from .. import name`


@pytest.mark.parametrize("command", [
    ["-m", "hpc_ncsn", "--help"],
    ["-m", "hpc_ncsn", "generate", "--help"],
    ["-m", "hpc_ncsn", "sweep", "--help"],
    [str(ROOT / "launch" / "sweep.py"), "--help"],
    [str(ROOT / "train.py"), "--help"],
])
def test_help_answers_without_importing_torch(command):
    probe = ("import runpy, sys; sys.argv = sys.argv[1:]; "
             "target = sys.argv[1] if sys.argv[0] == '-m' else None\n"
             "sys.argv = [target, *sys.argv[2:]] if target else sys.argv\n"
             "try:\n"
             "    runpy.run_module(target, run_name='__main__', alter_sys=True) if target else "
             "runpy.run_path(sys.argv[0], run_name='__main__')\n"
             "except SystemExit as stop:\n"
             "    assert stop.code in (0, None), stop.code\n"
             "assert 'torch' not in sys.modules, 'torch was imported'\n")
    args = command if command[0] != "-m" else ["-m", *command[1:]]
    result = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage:" in result.stdout


def test_the_queue_is_asked_by_the_launcher_and_the_table_never_by_a_job_about_itself():
    """squeue runs once per poll of the whole sweep (the launcher's wait and --status, the table); the code a
    job runs (its task record, its body, the status store) never calls it."""
    callers = set()
    for name, imported in MODULES.items():
        if not name.startswith("sweep."):
            continue
        tree = ast.parse(PACKAGE.joinpath(*name.split(".")).with_suffix(".py").read_text())
        calls = {ast.unparse(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
        asks = {"scheduler.queue", "queue", "scheduler_queue", "scheduler.patient_queue", "slurm.observed_queue"}
        if calls & asks and name != "sweep.scheduler":
            callers.add(name)
    assert callers == {"sweep.launch", "sweep.slurm", "sweep.aggregate"}
