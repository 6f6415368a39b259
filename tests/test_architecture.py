"""The package's rooms and who may enter them (README, Architecture), read from the source's import statements."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "hpc_ncsn"

SCIENCE = {"config", "rng", "data", "schedules", "planning", "audit", "model", "loss", "ema", "sampling", "solvers",
           "toy", "heldout", "stats"}
# Heavy libraries and the one place each may be imported from.
HOMES = {"accelerate": "train", "deepspeed": "train", "h5py": "samples.shards", "torch_fidelity": "evaluate",
         "submitit": "sweep"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module `path` imports, absolute: 'torch', 'hpc_ncsn.config', ... (lazy imports included)."""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
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
    allowed = SCIENCE | {"errors", "files"}  # the error base class and atomic files: standard library only
    for name in SCIENCE:
        assert ours(MODULES[name]) <= allowed, (name, ours(MODULES[name]) - allowed)


def test_samples_and_evaluate_never_import_training_and_nothing_imports_the_cli():
    for name, imported in MODULES.items():
        if name.startswith(("samples", "evaluate")):
            assert not any(m == "train" or m.startswith("train.") for m in ours(imported)), name
        assert "cli" not in ours(imported) or name == "__main__", name


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
