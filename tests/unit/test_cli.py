"""``workflow-router`` (workflow_router/cli.py): dispatch, help from the modules' own parsers, lazy imports, the
seed's flag names with their environment variables, and docs/cli.md generated from the parsers
(workflow_router/_cli_docs.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import version as dist_version
from pathlib import Path

import pytest

from a2a_service.config import Settings as A2ASettings
from extproc.config import settings_from_args
from workflow_router import _cli_docs as cli_docs
from workflow_router import cli

ROOT = Path(__file__).resolve().parents[2]
SERVERS = ("extproc", "a2a", "sim")  # house rule: every server flag has an environment variable


def test_docs_cli_md_is_generated_from_the_parsers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXTPROC_WORKFLOW_TTL", "5")  # the generator ignores the shell's settings
    committed = (ROOT / "docs" / "cli.md").read_text()
    assert committed == cli_docs.render_docs(), (
        "docs/cli.md is stale: run `python -m workflow_router.cli docs > docs/cli.md`")


def test_docs_list_every_flag_of_every_available_command() -> None:
    text = cli_docs.render_docs()
    for command in [*cli.COMMANDS.values(), *cli.BENCHMARKS.values()]:
        if not cli.available(command) or not cli.has_parser(command):
            continue
        section = text.split(f"## `{cli.PROG} {cli.command_path(command)}`", 1)[1].split("\n## ", 1)[0]
        for action in cli_docs.options(cli.build_parser(command, {})):
            assert f"`{action.option_strings[-1]}`" in section, (command.name, action.option_strings)


@pytest.mark.parametrize("name", SERVERS)
def test_every_server_flag_has_an_environment_variable_that_works(name: str) -> None:
    command = cli.COMMANDS[name]
    options = [a.dest for a in cli_docs.options(cli.build_parser(command, {})) if a.nargs != 0]
    assert sorted(cli_docs.env_vars(command)) == sorted(options)


def test_the_env_probe_tells_flags_without_a_variable() -> None:
    found = cli_docs.env_vars(cli.COMMANDS["stack"])
    assert found["instances"] == "STACK_INSTANCES" and "no_demo" not in found
    assert cli_docs.env_vars(cli.COMMANDS["envoy-config"]) == {}


def test_seed_flag_names_and_their_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    # The seed's router flags (docs/migration.md): ext_proc's three, the A2A service's two.
    settings = settings_from_args(["--workflow-ttl", "600", "--max-workflows", "50", "--batching-preference", "0.5"])
    assert (settings.workflow_ttl, settings.max_workflows, settings.batching_preference) == (600.0, 50, 0.5)
    monkeypatch.setenv("EXTPROC_WORKFLOW_TTL", "700")
    monkeypatch.setenv("EXTPROC_MAX_WORKFLOWS", "60")
    monkeypatch.setenv("EXTPROC_BATCHING_PREFERENCE", "0.25")
    settings = settings_from_args([])
    assert (settings.workflow_ttl, settings.max_workflows, settings.batching_preference) == (700.0, 60, 0.25)

    a2a = A2ASettings.from_args(["--max-message-queue-size", "5", "--max-message-size", "2048",
                                 "--workflow-ttl", "600", "--max-workflows", "50"], env={})
    assert (a2a.max_message_queue_size, a2a.max_message_size, a2a.workflow_ttl, a2a.max_workflows) == (5, 2048, 600, 50)
    a2a = A2ASettings.from_args([], env={"A2A_MAX_MESSAGE_QUEUE_SIZE": "6", "A2A_MAX_MESSAGE_SIZE": "4096"})
    assert (a2a.max_message_queue_size, a2a.max_message_size) == (6, 4096)
    assert (A2ASettings().max_message_queue_size, A2ASettings().max_message_size) == (1000, 1024 * 1024)  # seed's


@pytest.mark.parametrize("path", [[name] for name in cli.COMMANDS] + [["bench", n] for n in cli.BENCHMARKS])
def test_help_is_the_commands_own_parser(path: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    resolved = cli.resolve(path)
    assert resolved is not None
    command, _ = resolved
    if not cli.available(command):
        assert cli.main([*path, "--help"]) == 2
        return
    if not cli.has_parser(command):  # parser still inside main(): its own --help
        assert cli.main([*path, "--help"]) == 0
        assert "--help" in capsys.readouterr().out
        return
    assert cli.main([*path, "--help"]) == 0
    out = capsys.readouterr().out
    assert out == cli.build_parser(command).format_help()
    assert out.startswith(f"usage: {cli.PROG} {' '.join(path)}")
    assert all(a.option_strings[-1] in out for a in cli_docs.options(cli.build_parser(command)))


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.version() == dist_version(cli.DISTRIBUTION)
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"{cli.PROG} {dist_version(cli.DISTRIBUTION)}"


def test_errors_are_exit_code_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["no-such-command"]) == 2
    assert "unknown command 'no-such-command'" in capsys.readouterr().err
    assert cli.main(["bench", "no-such-benchmark"]) == 2
    assert "unknown benchmark" in capsys.readouterr().err
    assert cli.main(["envoy-config", "--no-such-flag"]) == 2  # the module's own parser refuses it
    assert "--no-such-flag" in capsys.readouterr().err
    assert cli.main(["extproc", "--workflow-ttl", "0"]) == 2  # the module's own validation
    assert "--workflow-ttl must be > 0" in capsys.readouterr().err


def test_a_command_runs_the_module_main(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["envoy-config", "--listen-port", "8123"]) == 0
    assert "port_value: 8123" in capsys.readouterr().out


_PROBE = """
import json, sys
from workflow_router.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


@pytest.mark.parametrize(
    ("argv", "forbidden"),
    [
        # Help of the servers loads only their config modules.
        (["a2a", "--help"], ("benchmarks", "fastapi", "uvicorn", "grpc")),
        (["extproc", "--help"], ("benchmarks", "fastapi", "uvicorn", "grpc")),
        (["sim", "--help"], ("grpc", "a2a_service._server", "a2a_service._transports._http", "benchmarks.stack",
                             "benchmarks.compare_routers", "benchmarks.gateway_overhead")),
        # Starting the A2A service (refused here by its parser, after its module was imported) loads no
        # simulator or benchmark.
        (["a2a", "--http-port", "not-a-port"], ("benchmarks",)),
        (["--version"], ("benchmarks", "fastapi", "grpc")),
    ],
)
def test_commands_are_imported_lazily(argv: list[str], forbidden: tuple[str, ...]) -> None:
    done = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, check=False)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    loaded = [m for m in result["modules"] if m.split(".")[0] in forbidden or m.startswith(forbidden)]
    assert loaded == []
    assert result["code"] == (2 if "not-a-port" in argv else 0)
    if "not-a-port" in argv:
        assert "a2a_service.__main__" in result["modules"]  # the command's module did run


def test_python_dash_m_extproc_cli_works() -> None:
    done = subprocess.run([sys.executable, "-m", "workflow_router.cli", "--version"], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, check=False)
    assert done.returncode == 0 and done.stdout.strip() == f"{cli.PROG} {dist_version(cli.DISTRIBUTION)}"



def test_docs_command_prints_the_generated_docs(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["docs"]) == 0
    assert capsys.readouterr().out == cli_docs.render_docs()
