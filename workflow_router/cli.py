"""``workflow-router``: one command for every part of the project.

``workflow-router <command> [flags]`` hands the flags to the command's own parser (each flag is defined once, in
the module that uses it); ``workflow-router <command> --help`` prints that parser's help. Commands are imported
only when run, so ``workflow-router a2a`` loads neither the simulator nor the benchmarks.
``workflow-router docs`` prints docs/cli.md (every command, flag, environment variable and default), generated
from the same parsers by workflow_router/_cli_docs.py.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

DISTRIBUTION = "envoy-workflow-router"
PROG = "workflow-router"


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    summary: str
    module: str  # defines build_parser() and main(argv)
    # Environment variable a flag also reads, by the module's naming rule (None: the command reads none).
    # docs/cli.md lists a variable only where the parser really reads it (checked flag by flag).
    env_name: Callable[[str], str] | None = None
    # build_parser() of these modules takes the environment as an argument.
    parser_takes_env: bool = False


def _prefixed(prefix: str) -> Callable[[str], str]:
    return lambda flag: prefix + flag.lstrip("-").replace("-", "_").upper()


COMMANDS: dict[str, Command] = {
    c.name: c
    for c in (
        Command("extproc", "the Envoy ext_proc server (workflow-aware routing)", "extproc.server",
                _prefixed("EXTPROC_")),
        Command("a2a", "the agent-to-agent message service (HTTP + gRPC)", "a2a_service.__main__",
                _prefixed("A2A_"), parser_takes_env=True),
        Command("envoy-config", "print the standalone Envoy configuration (envoy/envoy.yaml)", "extproc.envoy_config"),
        Command("stack", "start the local stack, run the demo, serve until Ctrl-C (what `make run` runs)",
                "benchmarks.stack", _prefixed("STACK_")),
        Command("sim", "one simulated vLLM server", "benchmarks.simulator.__main__", _prefixed("VLLM_SIM_"),
                parser_takes_env=True),
    )
}

BENCHMARKS: dict[str, Command] = {
    c.name: c
    for c in (
        Command("gateway-overhead",
                "Envoy alone vs Envoy + ext_proc vs vllm-router; fixed-rate latency; routing decision time",
                "benchmarks.gateway_overhead"),
        Command("workflow", "the seed's workflow benchmark (sequential, parallel, cache, A2A)",
                "benchmarks.workflow_benchmark"),
        Command("a2a", "A2A service latency and throughput", "benchmarks.a2a_benchmark"),
        Command("compare-routers", "the router comparison (ours, Envoy's, vllm-router's)",
                "benchmarks.compare_routers"),
        Command("chaos", "fault injection under load (instances, ext_proc, A2A, Redis, Envoy)", "benchmarks.chaos"),
    )
}

# --- parsers -----------------------------------------------------------------------------------------------
# The modules' build_parser() of extproc/config.py and benchmarks/stack.py read os.environ; the others take a
# mapping. The server module's parser may live in its config module: main() is in `module`, the parser here.
_PARSER_MODULE = {"extproc.server": "extproc.config", "a2a_service.__main__": "a2a_service.config"}


def available(command: Command) -> bool:
    """False for a benchmark whose module is not in this checkout."""
    try:
        return importlib.util.find_spec(command.module) is not None
    except ModuleNotFoundError:
        return False


def has_parser(command: Command) -> bool:
    """False for a module whose parser is still built inside main() (its --help is then main's own)."""
    module = importlib.import_module(_PARSER_MODULE.get(command.module, command.module))
    return callable(getattr(module, "build_parser", None))


def build_parser(command: Command, env: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    module = importlib.import_module(_PARSER_MODULE.get(command.module, command.module))
    if command.parser_takes_env:
        parser: argparse.ArgumentParser = module.build_parser(os.environ if env is None else env)
    elif env is None:
        parser = module.build_parser()
    else:
        with _environ(env):
            parser = module.build_parser()
    parser.prog = f"{PROG} {command_path(command)}"
    return parser


@contextlib.contextmanager
def _environ(env: Mapping[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    try:
        os.environ.clear()
        os.environ.update(env)
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def command_path(command: Command) -> str:
    return f"bench {command.name}" if BENCHMARKS.get(command.name) is command else command.name


def resolve(argv: Sequence[str]) -> tuple[Command, list[str]] | None:
    """The command an argv names and the flags left for it (None: a top-level call such as --version)."""
    if not argv or argv[0].startswith("-") or argv[0] == "docs":
        return None
    name, rest = argv[0], list(argv[1:])
    if name == "bench":
        if not rest or rest[0].startswith("-"):
            return None
        if rest[0] not in BENCHMARKS:
            raise LookupError(f"unknown benchmark {rest[0]!r}; choose from {', '.join(BENCHMARKS)}")
        return BENCHMARKS[rest[0]], rest[1:]
    if name not in COMMANDS:
        raise LookupError(f"unknown command {name!r}; choose from {', '.join([*COMMANDS, 'bench', 'docs'])}")
    return COMMANDS[name], rest


def wants_help(args: Sequence[str]) -> bool:
    for arg in args:
        if arg == "--":
            return False
        if arg in ("-h", "--help"):
            return True
    return False


# --- top level ---------------------------------------------------------------------------------------------
def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version(DISTRIBUTION)
    except PackageNotFoundError:  # a source checkout that was never pip-installed
        from extproc import __version__

        return __version__


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Workflow-aware routing for multi-agent LLM systems: the ext_proc server, the A2A service, "
        "the Envoy config generator, the local stack, the vLLM simulator and the benchmarks.",
        epilog=f"`{PROG} <command> --help` lists a command's flags; every server flag also reads an "
        "environment variable (docs/cli.md).",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {version()}")
    commands = parser.add_subparsers(dest="command", metavar="<command>")
    for command in COMMANDS.values():
        commands.add_parser(command.name, help=command.summary, add_help=False)
    commands.add_parser("bench", add_help=False,
                        help="a benchmark: " + ", ".join(BENCHMARKS))
    commands.add_parser("docs", add_help=False, help="print docs/cli.md (generated from the parsers)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        target = resolve(args)
    except LookupError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    if target is None:
        if args[:1] == ["docs"]:
            from workflow_router._cli_docs import render_docs

            sys.stdout.write(render_docs())
            return 0
        if args[:1] == ["bench"]:
            print(f"usage: {PROG} bench <name> [flags]; benchmarks:")
            for name, command in BENCHMARKS.items():
                print(f"  {name:<18} {command.summary}" + ("" if available(command) else " (not in this checkout)"))
            return 0 if len(args) == 1 or wants_help(args[1:]) else 2
        return _exit_code(_top_parser().parse_args, args or ["--help"])
    command, rest = target
    if not available(command):
        print(f"{PROG}: error: {command_path(command)!r} is not in this checkout (no module {command.module})",
              file=sys.stderr)
        return 2
    if wants_help(rest) and has_parser(command):
        build_parser(command).print_help()
        return 0
    module = importlib.import_module(command.module)
    return _exit_code(module.main, rest)


def _exit_code(function: Callable[[list[str]], Any], args: list[str]) -> int:
    try:
        result = function(args)
    except SystemExit as exc:  # argparse errors and --help/--version, or a server's own exit
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
