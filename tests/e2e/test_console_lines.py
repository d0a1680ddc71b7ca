"""How a child's line reads on the console of `ordersaga up`: one line, its level, its process."""

from __future__ import annotations

import io
import json

from rich.console import Console

from ordersaga.supervisor import LogEcho, LogFormat


def shown(lines: list[str], log_format: LogFormat = "console", level: str = "warning") -> list[str]:
    out = io.StringIO()
    echo = LogEcho(Console(file=out, width=100), log_format, level)
    for line in lines:
        echo("orders", "cyan", line)
    return out.getvalue().splitlines()


def test_a_json_error_with_a_traceback_is_one_readable_line() -> None:
    line = json.dumps(
        {
            "event": "capture_failed",
            "level": "error",
            "timestamp": "2026-12-02T14:00:41.858Z",
            "service": "orders",
            "order_id": "o-1",
            "exception": "Traceback (most recent call last):\n  File x\nValueError: card expired",
        }
    )
    [rendered] = shown([line])
    assert rendered.startswith("orders       | ")
    assert "ERROR capture_failed order_id=o-1 ! ValueError: card expired" in rendered
    assert "{" not in rendered and "service=" not in rendered


def test_other_programs_levels_are_understood_and_info_is_left_to_the_log_file() -> None:
    lines = [
        "[27090] 2026/12/02 14:00:47.922380 [INF] Server is ready",
        "[27090] 2026/12/02 14:00:47.922380 [WRN] slow consumer",
        'time=2026-12-02T14:00:41.858 level=WARN msg="Failed to poll for task." service=worker',
        '{"event": "order_placed", "level": "info"}',
        "Temporal CLI 1.9.1 (Server 1.32.0, UI 2.54.1)",
    ]
    rendered = shown(lines)
    assert len(rendered) == 2
    assert "WARN  slow consumer" in rendered[0]
    assert "WARN  Failed to poll for task. service=worker" in rendered[1]
    assert len(shown(lines, level="info")) == 5


def test_json_format_names_the_process_in_every_line() -> None:
    rendered = shown(['{"event": "x", "level": "warning"}', "[1] 2026/12/02 14:00:47.9 [ERR] gone"], "json")
    assert [json.loads(line)["process"] for line in rendered] == ["orders", "orders"]
    assert json.loads(rendered[1])["event"] == "gone"
