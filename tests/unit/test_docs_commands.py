"""Every command of ours that README.md and docs/*.md show is one the software accepts.

Scanned: shell-like fenced code blocks (no language, bash, sh, shell, console, zsh) and inline code spans that
start with a command of ours. Checked:

- ``make X …``: X is a Makefile target; for a target whose recipe runs ``-m <module> … $(ARGS)``, the
  ``ARGS="…"`` given is parsed by that module's parser (``make run ARGS="--instances 5"``).
- ``python -m <module> …`` (any python, ``.venv/bin/python``…) for our packages (extproc, a2a_service,
  benchmarks, examples), the pyproject scripts (``workflow-extproc`` …) and ``workflow-router …``: the arguments are
  parsed — never run — by the real parser (the modules' ``build_parser()``), with the command's leading
  ``VAR=value`` assignments in the environment. A module without ``build_parser()`` must exist and be given no
  arguments.
- Synopsis notation is understood: ``...`` / ``…`` tokens are dropped and ``[--flag value]`` brackets removed;
  a command with a ``<placeholder>`` is a template, not a command, and is skipped.

Out of scope: curl and any other program (their URLs and bodies are covered by the e2e tests), and python
code blocks. The files are globbed at collection time, so docs pages added later are checked too.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import re
import shlex
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from workflow_router import cli

ROOT = Path(__file__).resolve().parents[2]
DOC_FILES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
OUR_PACKAGES = ("extproc", "a2a_service", "benchmarks", "examples")
SHELL_LANGUAGES = {"", "bash", "sh", "shell", "console", "zsh"}
_FENCE = re.compile(r"^\s*(```+|~~~+)\s*([\w+-]*)")
_INLINE = re.compile(r"`([^`\n]+)`")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_PLACEHOLDER = re.compile(r"<[A-Za-z][\w -]*>")
_REDIRECT = re.compile(r"\s\d?(?:>>?|<)(?:&\d|\s*[^\s&|;]+)")
_SEPARATORS = {"&&", "||", ";", "|", "&", ";;"}
_PYTHON = re.compile(r"(?:^|/)python(?:3(?:\.\d+)?)?$|^\$\(PY\)$|^\$PY$")
# Modules whose parser lives elsewhere (python -m extproc runs extproc.server.main, parser in extproc.config).
_MODULE_ALIASES = {
    "extproc": "extproc.server",
    "extproc.__main__": "extproc.server",
    "a2a_service": "a2a_service.__main__",
    "benchmarks.simulator": "benchmarks.simulator.__main__",
}


@dataclass(frozen=True)
class DocCommand:
    source: str  # file:line
    tokens: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        return f"{self.source}: {shlex.join(self.tokens)}"


# --- extraction --------------------------------------------------------------------------------------------
def _shell_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, shell text) of shell-like code blocks (continuations joined) and inline code spans."""
    in_block, language, pending, start = False, "", "", 0
    for number, line in enumerate(text.splitlines(), 1):
        fence = _FENCE.match(line)
        if fence:
            if not in_block:
                in_block, language = True, fence.group(2).lower()
            else:
                in_block = False
            continue
        if in_block:
            if language not in SHELL_LANGUAGES:
                continue
            stripped = line.strip()
            if stripped.startswith("$ "):
                stripped = stripped[2:]
            if not pending:
                start = number
            if stripped.endswith("\\"):
                pending += stripped[:-1] + " "
                continue
            yield start, pending + stripped
            pending = ""
        else:
            for span in _INLINE.findall(line):
                yield number, span


def _segments(line: str) -> Iterator[list[str]]:
    if _PLACEHOLDER.search(line):
        return
    lexer = shlex.shlex(_REDIRECT.sub(" ", " " + line), posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    segment: list[str] = []
    try:
        tokens = list(lexer)
    except ValueError:  # unbalanced quotes: prose in backticks, not a command
        return
    for token in tokens:
        if token in _SEPARATORS:
            if segment:
                yield segment
            segment = []
        else:
            segment.append(token)
    if segment:
        yield segment


def _scripts() -> dict[str, str]:
    """Console script -> module, from pyproject (plus workflow-router until the lead adds it there)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    scripts = {name: target.partition(":")[0] for name, target in project.get("scripts", {}).items()}
    scripts.setdefault(cli.PROG, "workflow_router.cli")
    return scripts


def _is_ours(tokens: list[str], scripts: dict[str, str]) -> bool:
    head = tokens[0]
    if head == "make" or head in scripts:
        return True
    if _PYTHON.search(head) and len(tokens) > 2 and tokens[1] == "-m":
        return tokens[2].split(".")[0] in OUR_PACKAGES
    return False


def extract_commands(text: str, source: str) -> list[DocCommand]:
    scripts = _scripts()
    found: list[DocCommand] = []
    for number, line in _shell_lines(text):
        for segment in _segments(line):
            env: list[tuple[str, str]] = []
            while segment and _ASSIGNMENT.match(segment[0]):
                name, _, value = segment.pop(0).partition("=")
                env.append((name, value))
            if segment and _is_ours(segment, scripts):
                found.append(DocCommand(f"{source}:{number}", tuple(segment), tuple(env)))
    return found


# --- checking ----------------------------------------------------------------------------------------------
def _makefile() -> tuple[set[str], dict[str, str]]:
    """Targets of the Makefile, and target -> module its recipe runs with $(ARGS)."""
    targets: set[str] = set()
    args_module: dict[str, str] = {}
    current = None
    for line in (ROOT / "Makefile").read_text().splitlines():
        rule = re.match(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", line)
        if rule:
            current = rule.group(1)
            targets.add(current)
        elif line.startswith("\t") and current is not None and "$(ARGS)" in line:
            module = re.search(r"-m\s+([\w.]+)", line)
            if module:
                args_module[current] = module.group(1)
    return targets, args_module


def _synopsis(args: list[str]) -> list[str]:
    out: list[str] = []
    for arg in args:
        if arg in ("...", "…"):
            continue
        if arg.startswith("[") and len(arg) > 1:
            arg = arg[1:]
        if arg.endswith("]") and "[" not in arg:
            arg = arg[:-1]
        if arg:
            out.append(arg)
    return out


def _parse_with(parser_factory: object, args: list[str], env: dict[str, str]) -> str | None:
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            parser = parser_factory(env)  # type: ignore[operator]
            if not cli.wants_help(args):
                parser.parse_args(args)
    except SystemExit as exc:
        if exc.code not in (0, None):
            return f"the parser refuses it: {stderr.getvalue().strip().splitlines()[-1:]}"
    return None


def check_module(module: str, args: list[str], env: dict[str, str]) -> str | None:
    """None if ``python -m module args`` parses; else the problem."""
    if module == "workflow_router.cli":
        return check_cli(args, env)
    module = _MODULE_ALIASES.get(module, module)
    for command in [*cli.COMMANDS.values(), *cli.BENCHMARKS.values()]:
        if command.module == module and cli.available(command):
            return _check_command(command, args, env)
    try:
        spec = importlib.util.find_spec(module)
    except ModuleNotFoundError:
        spec = None
    if spec is None:
        return f"no module {module}"
    imported = importlib.import_module(module)
    factory = getattr(imported, "build_parser", None)
    if factory is None:
        return f"{module} has no build_parser() to check its arguments {args}" if args else None
    return _parse_with(lambda e: _with_env(factory, e), args, env)


def _with_env(factory: object, env: dict[str, str]) -> object:
    with cli._environ(env):
        return factory()  # type: ignore[operator]


def check_cli(args: list[str], env: dict[str, str]) -> str | None:
    try:
        target = cli.resolve(args)
    except LookupError as exc:
        return str(exc)
    if target is None:
        if not args or args[0] in ("-h", "--help", "--version", "docs", "bench"):
            return None
        return f"not a {cli.PROG} command: {args}"
    command, rest = target
    if not cli.available(command):
        return f"{command.module} is not in this checkout"
    return _check_command(command, rest, env)


def _check_command(command: cli.Command, args: list[str], env: dict[str, str]) -> str | None:
    if not cli.has_parser(command):
        return None if not args or cli.wants_help(args) else f"{command.module} has no build_parser() to check {args}"
    return _parse_with(lambda e: cli.build_parser(command, e), args, env)


def check(command: DocCommand) -> str | None:
    import os

    tokens = list(command.tokens)
    env = {**os.environ, **dict(command.env)}
    scripts = _scripts()
    if tokens[0] == "make":
        targets, args_module = _makefile()
        make_args = [t for t in tokens[1:] if not t.startswith("-")]
        assignments = dict(t.split("=", 1) for t in make_args if "=" in t)
        wanted = [t for t in make_args if "=" not in t] or ["setup"]  # the first target is the default
        for target in wanted:
            if target not in targets:
                return f"no Makefile target {target!r}"
            if "ARGS" in assignments and target in args_module:
                problem = check_module(args_module[target], _synopsis(shlex.split(assignments["ARGS"])), env)
                if problem:
                    return f"ARGS of make {target}: {problem}"
        return None
    if tokens[0] in scripts:
        return check_module(scripts[tokens[0]], _synopsis(tokens[1:]), env)
    return check_module(tokens[2], _synopsis(tokens[3:]), env)


# --- the tests ---------------------------------------------------------------------------------------------
def _all_commands() -> list[DocCommand]:
    commands: list[DocCommand] = []
    for path in DOC_FILES:
        commands += extract_commands(path.read_text(), str(path.relative_to(ROOT)))
    return commands


ALL = _all_commands()


@pytest.mark.parametrize("command", ALL, ids=str)
def test_documented_command_is_accepted(command: DocCommand) -> None:
    problem = check(command)
    assert problem is None, f"{command}\n  -> {problem}"


def test_the_readme_quick_start_is_found() -> None:
    readme = {c.tokens for c in ALL if c.source.startswith("README.md:")}
    assert ("make", "run") in readme and ("make", "test") in readme
    assert any(c.tokens[:3] == ("python", "-m", "benchmarks.compare_routers") for c in ALL)
    assert len(ALL) >= 15


def test_the_checker_finds_wrong_commands() -> None:
    markdown = "\n".join([
        "Prose with `make run ARGS=\"--instances 5 --time-scale 0.1\"` and `make no-such-target`.",
        "```bash",
        "EXTPROC_WORKFLOW_TTL=600 python -m extproc --workflow-ttl 60 \\",
        "    --max-workflows 10   # a comment",
        ".venv/bin/python -m extproc --no-such-flag",
        "python -m extproc.envoy_config --listen-port 8001 > envoy/envoy.yaml && make envoy-config",
        "curl localhost:8001/v1/workflows/stats",
        "python -m pytest -q tests/unit",
        "workflow-router extproc --backends <names>",
        "workflow-router bench compare-routers --quick --shape both",
        "workflow-router bench compare-routers --shape sideways",
        "workflow-router a2a --max-message-queue-size lots",
        "workflow-router nope",
        "python -m benchmarks.no_such_module",
        "make run ARGS=\"--instances\"",
        "workflow-extproc ... --kv-index lmcache [--lmcache-timeout 0.05]",
        "```",
        "```python",
        "python -m extproc --ignored-in-python-blocks",
        "```",
    ])
    commands = extract_commands(markdown, "x.md")
    verdicts = {c.tokens: check(c) for c in commands}
    accepted = [
        'make run ARGS="--instances 5 --time-scale 0.1"',
        "python -m extproc --workflow-ttl 60 --max-workflows 10",
        "python -m extproc.envoy_config --listen-port 8001",
        "make envoy-config",
        "workflow-router bench compare-routers --quick --shape both",
        "workflow-extproc ... --kv-index lmcache [--lmcache-timeout 0.05]",
    ]
    refused = [
        "make no-such-target",
        ".venv/bin/python -m extproc --no-such-flag",
        "workflow-router bench compare-routers --shape sideways",
        "workflow-router a2a --max-message-queue-size lots",
        "workflow-router nope",
        "python -m benchmarks.no_such_module",
        'make run ARGS="--instances"',
    ]
    assert sorted(verdicts) == sorted(tuple(shlex.split(c)) for c in accepted + refused)  # curl, pytest skipped
    assert [c for c in accepted if verdicts[tuple(shlex.split(c))] is not None] == []
    assert [c for c in refused if verdicts[tuple(shlex.split(c))] is None] == []
    assert dict(next(c for c in commands if c.tokens[2:3] == ("extproc",)).env) == {"EXTPROC_WORKFLOW_TTL": "600"}
