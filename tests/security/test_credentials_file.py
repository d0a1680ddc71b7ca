"""`ordersaga up` keeps its generated secrets in `<data dir>/credentials.json`, readable by its owner only."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from ordersaga.seed import Credentials


def _create(data_dir: Path) -> Credentials:
    return Credentials.load_or_create(
        data_dir,
        admin_email="admin@example.com",
        admin_password=None,
        demo_email="demo@example.com",
        demo_password=None,
        internal_token=None,
    )


def test_a_new_credentials_file_is_private_even_under_a_permissive_umask(tmp_path: Path) -> None:
    previous = os.umask(0o000)
    try:
        creds = _create(tmp_path / "data")
    finally:
        os.umask(previous)
    path = tmp_path / "data" / "credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["admin_password"] == creds.admin_password


def test_an_older_world_readable_file_is_narrowed_and_its_secrets_kept(tmp_path: Path) -> None:
    first = _create(tmp_path)
    path = tmp_path / "credentials.json"
    path.chmod(0o644)
    again = _create(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert (again.internal_token, again.admin_password) == (first.internal_token, first.admin_password)
    assert not again.generated_now
