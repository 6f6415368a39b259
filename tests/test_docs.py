"""The README and docs/ agree with the repository: every link resolves and every quoted command parses.

Links: each relative link or image in README.md and docs/**/*.md names a file or folder that
exists, and a `#anchor` names a heading of its target under GitHub's slug rule (lower case,
punctuation dropped, spaces to hyphens, -1, -2 … for repeated headings).

Commands: each line of a ```bash block (continuation lines joined, `# comments` dropped, split
at `&&`, `||`, `;` and `&`) is one of:
  - setup, not run: `python3 -m venv …`, `pip …` (any path ending in pip), `apt-get …`,
    `source …/activate`;
  - the project's own commands, checked: `hpc-ncsn …`, `python -m hpc_ncsn …`, `python train.py …`,
    `python launch/sweep.py …`, `python bench/<script>.py …`, also behind leading VAR=value
    assignments, `accelerate launch [its options]` or `torchrun [its options]`. Each runs in this
    process with `--help` appended and must exit 0; its help must name every `--option` the
    line uses (argparse stops at --help before it reports unknown options), and its
    `section.key=value` overrides must load with the line's --config;
  - `python -m pytest …`: its paths exist and its `-m` expression names registered markers.
In README.md any other command fails the test (the newcomer runs these as written; move it to
docs/ or teach the rule). In docs/ other tools (sbatch, apptainer, sudo …) are not checked.
"""

from __future__ import annotations

import io
import re
import runpy
import shlex
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^\s*```")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*([^)\s]+)(?:\s+\"[^\"]*\")?\s*\)")
INTERPRETERS = {"python", "python3", ".venv/bin/python"}
SCRIPTS = re.compile(r"^(train\.py|launch/sweep\.py|bench/\w+\.py)$")


def prose(text: str) -> str:
    """The page without its fenced code blocks and inline code spans (links there are not links)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(re.sub(r"`[^`]*`", "", line))
    return "\n".join(lines)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found, seen = set(), {}
    for line in prose(page.read_text(encoding="utf-8")).splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            base = slug(match.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def broken_links(page: Path) -> list[str]:
    broken = []
    for target in LINK.findall(prose(page.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: …
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and (resolved.suffix != ".md" or anchor not in anchors(resolved)):
            broken.append(f"{target}: no heading #{anchor} in {resolved.name}")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    assert not broken_links(page), f"{page.relative_to(ROOT)}: broken links: {broken_links(page)}"


def test_a_missing_file_and_a_missing_heading_are_reported(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Here it is\n\n[a](#here-it-is) [b](#nowhere) [c](missing.md) `[d](ignored.md)`\n"
                    "```\n[e](ignored.md)\n```\n", encoding="utf-8")
    assert broken_links(page) == ["#nowhere: no heading #nowhere in page.md", "missing.md: no such file"]


def test_the_slug_rule_is_githubs():
    assert slug("The FID Inception's weights, offline") == "the-fid-inceptions-weights-offline"
    assert slug("Study: the noise-schedule ablation on Fashion-MNIST") == \
        "study-the-noise-schedule-ablation-on-fashion-mnist"
    assert slug("Threads on a [shared](x.md) node") == "threads-on-a-shared-node"


def bash_commands(page: Path) -> list[list[str]]:
    """The commands of the page's ```bash blocks, as argument lists."""
    commands, block, lines = [], None, page.read_text(encoding="utf-8").splitlines()
    for line in lines:
        if block is None:
            if re.match(r"^\s*```bash\s*$", line):
                block = []
            continue
        if FENCE.match(line):
            text = "\n".join(block).replace("\\\n", " ")
            for command in text.splitlines():
                tokens, current = shlex.split(command, comments=True), []
                for token in tokens + ["&&"]:
                    if token in ("&&", ";", "&", "||"):
                        if current:
                            commands.append(current)
                        current = []
                    else:
                        current.append(token)
            block = None
        else:
            block.append(line)
    return commands


def classify(tokens: list[str]) -> tuple[str, list[str]]:
    """('setup' | 'project' | 'pytest' | 'other', the project command as [target, args...])."""
    while tokens and re.match(r"^[A-Z_][A-Z0-9_]*=", tokens[0]):
        tokens = tokens[1:]
    head = tokens[0]
    if head in ("apt-get", "apt", "pip", "pip3") or head.endswith("/pip") or \
            (head in ("source", ".") and tokens[-1].endswith("/activate")):
        return "setup", []
    if head in ("accelerate", "torchrun"):
        for index, token in enumerate(tokens[1:], start=1):
            if token == "-m" or SCRIPTS.match(token):
                return classify(["python", *tokens[index:]])
        return "other", []
    if head == "hpc-ncsn":
        return "project", ["hpc_ncsn", *tokens[1:]]
    if head in INTERPRETERS and len(tokens) > 1:
        if tokens[1:3] == ["-m", "venv"]:
            return "setup", []
        if tokens[1:3] == ["-m", "hpc_ncsn"]:
            return "project", ["hpc_ncsn", *tokens[3:]]
        if tokens[1:3] == ["-m", "pytest"]:
            return "pytest", tokens[3:]
        if SCRIPTS.match(tokens[1]):
            return "project", tokens[1:]
    return "other", []


def run_help(target: str, args: list[str]) -> tuple[int, str]:
    """Run a project command in this process with --help appended: (exit status, what it printed)."""
    out, saved, path = io.StringIO(), sys.argv, list(sys.path)  # scripts put their folders on sys.path
    sys.argv = [target, *args, "--help"]
    try:
        with redirect_stdout(out), redirect_stderr(out):
            if target == "hpc_ncsn":
                runpy.run_module("hpc_ncsn", run_name="__main__", alter_sys=False)
            else:
                runpy.run_path(str(ROOT / target), run_name="__main__")
        status = 0
    except SystemExit as exit_:
        status = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        sys.argv, sys.path[:] = saved, path
    return status, out.getvalue()


def check_project_command(command: list[str]) -> list[str]:
    target, args = command[0], command[1:]
    status, text = run_help(target, args)
    problems = [] if status == 0 else [f"exit status {status} with --help: {text.strip()[-300:]}"]
    options = {arg.split("=", 1)[0] for arg in args if arg.startswith("--")}
    problems += [f"its --help does not list {option}" for option in sorted(options) if option not in text]
    overrides = [arg for index, arg in enumerate(args)  # positional KEY=VALUE, not an option's value (--axis)
                 if re.match(r"^[a-z_]+\.[a-z_]+=", arg) and not (index and args[index - 1].startswith("-"))]
    if overrides and target in ("train.py", "launch/sweep.py", "hpc_ncsn"):
        from hpc_ncsn.config import load_config

        config = args[args.index("--config") + 1] if "--config" in args else None
        try:
            load_config(ROOT / config if config else None, overrides)
        except Exception as error:  # a UserError names the key; any other is a problem just the same
            problems.append(f"overrides {overrides} do not load: {error}")
    return problems


def check_pytest_command(args: list[str], markers: list[str]) -> list[str]:
    problems, registered = [], {line.split(":")[0].strip() for line in markers}
    for index, arg in enumerate(args):
        if index > 0 and args[index - 1] == "-m":
            words = set(re.findall(r"\w+", arg)) - {"and", "or", "not"}
            problems += [f"marker {word!r} is not registered" for word in sorted(words - registered)]
        elif not arg.startswith("-") and not (ROOT / arg.split("::")[0]).exists():
            problems.append(f"{arg}: no such test path")
    return problems


def command_id(item: tuple[Path, list[str]]) -> str:
    return f"{item[0].relative_to(ROOT)}: {' '.join(item[1])[:80]}"


COMMANDS = [(page, command) for page in PAGES for command in bash_commands(page)]


@pytest.mark.parametrize("page, command", COMMANDS, ids=[command_id(item) for item in COMMANDS])
def test_every_quoted_command_parses(page, command, pytestconfig):
    kind, checked = classify(command)
    where = f"{page.relative_to(ROOT)}: {shlex.join(command)}"
    if kind == "project":
        problems = check_project_command(checked)
    elif kind == "pytest":
        problems = check_pytest_command(checked, pytestconfig.getini("markers"))
    elif kind == "other" and page.name == "README.md" and page.parent == ROOT:
        problems = ["a command this test cannot check: use the project's commands in README.md, or teach "
                    "tests/test_docs.py's rule (its docstring) how to check it"]
    else:
        problems = []
    assert not problems, f"{where}: {'; '.join(problems)}"


def test_the_readme_quotes_the_two_commands_where_ci_finds_them():
    """.ci/run takes the first command line after the test-command marker; both commands stay verbatim."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    after = text.split("<!-- test-command -->", 1)[1].splitlines()
    found = next(line for line in after if line and not line.startswith(("<!--", "```", "#")))
    assert found == "python3 -m venv .venv && .venv/bin/pip install -e '.[dev]' && .venv/bin/python -m pytest -q --durations=15 tests"
    assert "python3 -m venv .venv && .venv/bin/pip install -e '.[dev]' && .venv/bin/python launch/sweep.py\n" in text
    assert "python launch/sweep.py --cluster slurm --schedules geometric,linear,snr" in text


def test_the_rule_tells_the_kinds_of_command_apart():
    assert classify(shlex.split("python3 -m venv .venv"))[0] == "setup"
    assert classify(shlex.split(".venv/bin/pip install -e '.[dev]'"))[0] == "setup"
    assert classify(shlex.split("ACCELERATE_USE_CPU=1 accelerate launch --num_processes 2 train.py --config c")) == \
        ("project", ["train.py", "--config", "c"])
    assert classify(shlex.split("torchrun --nproc_per_node 4 -m hpc_ncsn evaluate --samples s")) == \
        ("project", ["hpc_ncsn", "evaluate", "--samples", "s"])
    assert classify(shlex.split("sbatch slurm/train.sbatch"))[0] == "other"
    assert check_project_command(["launch/sweep.py", "--no-such-option"]) == \
        ["its --help does not list --no-such-option"]
    assert check_project_command(["train.py", "--config", "configs/debug.yaml", "train.no_such_key=1"])
