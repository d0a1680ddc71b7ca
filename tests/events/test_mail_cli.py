"""`ordersaga mail` shows what the local SMTP sink received, newest first."""

from __future__ import annotations

from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
import pytest

from ordersaga.mail import mail_command
from ordersaga.smtp_sink import start_smtp_sink
from tests.support.processes import free_port


async def test_mail_lists_what_the_sink_received(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sink = start_smtp_sink(tmp_path / "mail", port=free_port())
    try:
        for n in (1, 2):
            message = EmailMessage()
            message["From"], message["To"], message["Subject"] = (
                "a@example.com",
                f"u{n}@example.com",
                f"Hi {n}",
            )
            message["X-Ordersaga-Template"] = "welcome"
            message.set_content("hello")
            await aiosmtplib.send(message, hostname=sink.host, port=sink.port)
    finally:
        sink.stop()
    assert [m["To"] for m in sink.messages()] == ["u1@example.com", "u2@example.com"]

    mail_command(tmp_path, limit=1)
    out = capsys.readouterr().out
    assert "1 of 2" in out
    assert "welcome" in out


def test_mail_says_so_when_nothing_was_sent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mail_command(tmp_path)
    assert "No mail sent yet" in capsys.readouterr().out
