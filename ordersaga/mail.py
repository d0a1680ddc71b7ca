"""`ordersaga mail`: what was sent, from the SMTP sink's Maildir and the file email backend."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ordersaga.smtp_sink import read_mailbox


@dataclass(frozen=True)
class SentMail:
    at: datetime | None
    to: str
    subject: str
    template: str
    via: str


def default_data_dir() -> Path:
    return Path(os.environ.get("ORDERSAGA_DATA_DIR", ".data"))


def sent_mails(data_dir: Path) -> list[SentMail]:
    """Mails from `<data_dir>/mail/` (SMTP sink) and `<data_dir>/mail.jsonl` (file backend), newest first."""
    mails: list[SentMail] = []
    for message in read_mailbox(data_dir / "mail"):
        date = message.get("Date")
        mails.append(
            SentMail(
                at=parsedate_to_datetime(date) if date else None,
                to=str(message.get("To", "")),
                subject=str(message.get("Subject", "")),
                template=str(message.get("X-Ordersaga-Template", "")),
                via="smtp",
            )
        )
    jsonl = data_dir / "mail.jsonl"
    if jsonl.is_file():
        modified = datetime.fromtimestamp(jsonl.stat().st_mtime, UTC)
        for line in jsonl.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut by a crash
            mails.append(
                SentMail(
                    at=modified,  # the file backend records no time per line; the file's is an upper bound
                    to=str(record.get("to", "")),
                    subject=str(record.get("subject", "")),
                    template=str(record.get("template", "")),
                    via="file",
                )
            )
    epoch = datetime.min.replace(tzinfo=UTC)
    return sorted(mails, key=lambda m: m.at or epoch, reverse=True)


def mail_command(data_dir: Path | None = None, limit: int = 20) -> None:
    """Print the newest `limit` mails that were sent, as a table."""
    directory = data_dir or default_data_dir()
    mails = sent_mails(directory)
    console = Console()
    if not mails:
        console.print(f"No mail sent yet (looked in {directory / 'mail'} and {directory / 'mail.jsonl'}).")
        return
    table = Table(title=f"Sent mail ({min(limit, len(mails))} of {len(mails)}, newest first)")
    for column in ("sent at", "to", "subject", "template", "via"):
        table.add_column(column)
    for mail in mails[:limit]:
        when = mail.at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if mail.at else "?"
        table.add_row(when, mail.to, mail.subject, mail.template, mail.via)
    console.print(table)
