"""A real SMTP server (aiosmtpd) whose answer to DATA a test decides: the outside world misbehaving.

It keeps every mail it takes in a Maildir, like `ordersaga.smtp_sink`, and then, depending on
`reply`, answers 250, refuses, drops the connection without answering, or holds its answer until the
test releases it. In the last two cases the mail is already stored: the server took it, but the
client never hears so, which is the window a sender can crash in.
"""

from __future__ import annotations

import asyncio
import mailbox
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from email.message import Message
from pathlib import Path
from typing import Any, Literal

from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Mailbox

from ordersaga.smtp_sink import read_mailbox
from tests.support.processes import free_port

Reply = Literal["accept", "refuse", "drop", "hold"]


class ScriptedMailbox(Mailbox):
    def __init__(self, maildir: Path) -> None:
        super().__init__(maildir)
        self.reply: Reply = "accept"
        self.held = threading.Event()  # a DATA answer is being held
        self.release = threading.Event()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.reply == "refuse":
            return "554 5.7.1 refused by the test"
        await super().handle_DATA(server, session, envelope)  # stored: the mail is taken
        if self.reply == "drop":
            server.transport.close()
        elif self.reply == "hold":
            self.held.set()
            while not self.release.is_set():
                await asyncio.sleep(0.05)
        return "250 OK"


class ScriptedSmtp:
    def __init__(self, maildir: Path) -> None:
        for sub in ("tmp", "new", "cur"):
            (maildir / sub).mkdir(parents=True, exist_ok=True)
        self.maildir = maildir
        self.handler = ScriptedMailbox(maildir)
        self.port = free_port()
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port, ready_timeout=10)

    def messages(self) -> list[mailbox.MaildirMessage]:
        return read_mailbox(self.maildir)

    def copies(self, message_id: str) -> list[Message]:
        return [m for m in self.messages() if m["Message-ID"] == message_id]


@contextmanager
def scripted_smtp(maildir: Path) -> Iterator[ScriptedSmtp]:
    server = ScriptedSmtp(maildir)
    server.controller.start()
    try:
        yield server
    finally:
        server.handler.release.set()  # a held answer must not keep the server's loop from stopping
        server.controller.stop()
