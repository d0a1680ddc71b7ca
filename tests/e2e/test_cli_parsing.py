"""The command line's parsing, as a user meets it: wrong names refused, versions and env vars shown."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

from typer.testing import CliRunner

from ordersaga.cli import app

runner = CliRunner()


def test_migrate_of_the_gateway_is_a_usage_error() -> None:
    result = runner.invoke(app, ["migrate", "gateway"])
    assert result.exit_code == 2
    assert "'gateway' is not one of" in result.output
    assert "Traceback" not in result.output


def test_serve_of_an_unknown_service_is_a_usage_error() -> None:
    result = runner.invoke(app, ["serve", "billing"])
    assert result.exit_code == 2
    assert "'billing' is not one of" in result.output


def test_version_is_the_installed_distributions() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"ordersaga {version('ordersaga')}"


def test_help_shows_env_vars_and_examples() -> None:
    result = runner.invoke(app, ["up", "--help"], terminal_width=160)
    assert result.exit_code == 0
    assert "ORDERSAGA_DATA_DIR" in result.output and "ORDERSAGA_WORKERS" in result.output
    assert "ORDERSAGA_LOG_FORMAT" in result.output and "ORDERSAGA_LOG_LEVEL" in result.output
    assert "Examples:" in result.output


def test_chaos_takes_typed_options_with_help() -> None:
    result = runner.invoke(app, ["chaos", "--help"], terminal_width=160)
    assert result.exit_code == 0
    assert "--quiesce-timeout" in result.output and "Examples:" in result.output
    refused = runner.invoke(app, ["chaos", "--data-dir", "/tmp/x", "--orders", "many"])
    assert refused.exit_code == 2


def test_an_unknown_log_format_is_a_usage_error() -> None:
    result = runner.invoke(app, ["up", "--log-format", "yaml"])
    assert result.exit_code == 2
    assert "'yaml' is not one of" in result.output


def test_audit_is_a_command_and_a_missing_state_is_a_clear_error(tmp_path: Path) -> None:
    shown = runner.invoke(app, ["audit", "--help"], terminal_width=160)
    assert shown.exit_code == 0 and "--postgres" in shown.output and "Examples:" in shown.output
    result = runner.invoke(app, ["audit", "--data-dir", str(tmp_path / "nothing-here")])
    assert result.exit_code == 2
    assert "cannot read the stack's state" in result.output
    assert "Traceback" not in result.output
