"""`ordersaga orders`: operations on the orders service's data (the event log and its projection)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ordersaga.audit import DEFAULT_DATABASE_PREFIX, postgres_database_url

if TYPE_CHECKING:
    from services.orders.projection import RebuildReport

cli = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="rich")

# A rebuild reads the whole log and rewrites every row in one transaction: the service's 2 s
# statement timeout is for requests, not for this.
_STATEMENT_TIMEOUT_SECONDS = 600.0


def orders_database_url(
    data_dir: Path, postgres: str | None, database_prefix: str, database_url: str | None = None
) -> str:
    if database_url is not None:
        return database_url
    if postgres is not None:
        return postgres_database_url(postgres, f"{database_prefix}orders")
    return f"sqlite:///{data_dir / 'orders.db'}"


@cli.command(
    epilog="Examples:\n\n  [bold]ordersaga orders rebuild --check[/]\n\n"
    "  [bold]ordersaga orders rebuild --data-dir /tmp/chaos/data[/]\n\n"
    "  [bold]ordersaga orders rebuild --postgres postgresql://postgres@127.0.0.1:5432/postgres --check[/]"
)
def rebuild(
    data_dir: Annotated[
        Path,
        typer.Option(
            envvar="ORDERSAGA_DATA_DIR", show_envvar=True, help="The stack's data dir, holding orders.db."
        ),
    ] = Path(".data"),
    postgres: Annotated[
        str | None,
        typer.Option(
            envvar="ORDERSAGA_POSTGRES_URL",
            show_envvar=True,
            help="A PostgreSQL server; the orders database on it is <prefix>orders. Default: SQLite.",
        ),
    ] = None,
    database_prefix: Annotated[
        str,
        typer.Option(
            envvar="ORDERSAGA_DATABASE_PREFIX",
            show_envvar=True,
            help="Prefix of the databases on --postgres.",
        ),
    ] = DEFAULT_DATABASE_PREFIX,
    database_url: Annotated[
        str | None,
        typer.Option(
            envvar="ORDERS_DATABASE_URL",
            show_envvar=True,
            help="The orders database itself (as the orders service takes it); overrides the above.",
        ),
    ] = None,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Compare the projection with what the events give, without writing; exit 1 if they differ.",
        ),
    ] = False,
) -> None:
    """Drop the `orders` projection and write it again from the event log, in one transaction.

    Every column of every row is compared before and after, and each order that differs is printed.
    """
    url = orders_database_url(data_dir, postgres, database_prefix, database_url)
    if database_url is None and postgres is None and not (data_dir / "orders.db").is_file():
        typer.echo(f"ordersaga orders rebuild: no orders database at {data_dir / 'orders.db'}", err=True)
        raise typer.Exit(2)
    report = asyncio.run(_rebuild(url, check=check))
    for order_id, columns in report.differing.items():
        for column, (before, after) in columns.items():
            typer.echo(f"{order_id} {column}: projection {before!r}, events {after!r}")
    verb = "checked" if check else "rebuilt"
    typer.echo(f"{verb} {report.orders} orders from their events; {len(report.differing)} differed")
    raise typer.Exit(1 if check and report.differing else 0)


async def _rebuild(url: str, *, check: bool) -> RebuildReport:
    from services.kit.db import Database, DatabaseTimeouts
    from services.kit.settings import normalise_database_url
    from services.orders.projection import rebuild as rebuild_projection

    database = Database(
        normalise_database_url(url),
        timeouts=DatabaseTimeouts(statement_timeout_seconds=_STATEMENT_TIMEOUT_SECONDS),
    )
    try:
        async with database.session() as session:
            return await rebuild_projection(session, check=check)
    finally:
        await database.dispose()
