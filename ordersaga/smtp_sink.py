"""A local SMTP sink for development and tests: a real SMTP server (aiosmtpd) that keeps every mail.

Messages land in a Maildir (`<data dir>/mail/` for `ordersaga up`), readable by `ordersaga mail`,
by any mail client that opens a Maildir, or by `read_mailbox()`.
"""

from __future__ import annotations

import mailbox
from dataclasses import dataclass
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Mailbox

DEFAULT_PORT = 1025


@dataclass
class SmtpSink:
    controller: Controller
    maildir: Path
    host: str
    port: int

    def stop(self) -> None:
        self.controller.stop()

    def messages(self) -> list[mailbox.MaildirMessage]:
        return read_mailbox(self.maildir)


def start_smtp_sink(maildir: Path, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> SmtpSink:
    """Start the sink in a background thread; `sink.stop()` ends it. Mail is kept in `maildir`."""
    maildir.parent.mkdir(parents=True, exist_ok=True)
    for sub in ("tmp", "new", "cur"):  # Maildir only creates these for a folder it creates itself
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    controller = Controller(Mailbox(maildir), hostname=host, port=port, ready_timeout=10)
    controller.start()
    return SmtpSink(controller=controller, maildir=maildir, host=host, port=port)


def read_mailbox(maildir: Path) -> list[mailbox.MaildirMessage]:
    """Every message in the Maildir, oldest first (by delivery time)."""
    if not (maildir / "new").is_dir() and not (maildir / "cur").is_dir():
        return []
    box = mailbox.Maildir(maildir, create=False)
    messages: list[mailbox.MaildirMessage] = list(box.values())
    return sorted(messages, key=lambda m: m.get_date())
