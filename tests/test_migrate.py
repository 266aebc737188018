"""A new SQLite ledger is created without Alembic, and ends up exactly as Alembic makes it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from batchrunner.ledger import Ledger
from batchrunner.ledger import migrate as migrations
from batchrunner.ledger.engine import open_engine
from tests.conftest import chat_line, write_jsonl


def alembic_made(folder: Path) -> tuple[tuple[object, ...], ...]:
    engine = open_engine(f"sqlite:///{folder / 'alembic.db'}")
    try:
        migrations.alembic_upgrade(engine)
        return migrations.sqlite_schema(engine)
    finally:
        engine.dispose()


def test_the_captured_schema_is_of_the_migrations_there_are() -> None:
    assert migrations.revision_files() == migrations.SQLITE_SCHEMA_REVISIONS, (
        "a migration was added or renamed: capture the new schema into migrate.py with "
        "`python -m batchrunner.ledger.migrate`"
    )


def test_a_new_sqlite_ledger_is_exactly_what_alembic_makes(tmp_path: Path) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'quick.db'}")
    try:
        quick = migrations.sqlite_schema(ledger.engine)
    finally:
        ledger.close()
    assert quick == alembic_made(tmp_path)  # every table, index and its SQL, in order; version
    assert quick[-1] == (migrations.SQLITE_SCHEMA[-1].split("'")[1],)


def test_creating_a_ledger_and_submitting_to_it_never_imports_alembic(tmp_path: Path) -> None:
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(3)])
    script = (
        "import sys\n"
        "from batchrunner.cli import main\n"
        f"sys.argv = ['batchrunner', 'submit', {str(job)!r}, '--detach', "
        f"'--db', 'sqlite:///{tmp_path}/new/ledger.db']\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as exit:\n"
        "    assert not exit.code, exit.code\n"
        "assert 'alembic' not in sys.modules, 'alembic was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    Ledger(f"sqlite:///{tmp_path}/new/ledger.db").close()  # and it opens as current


def test_other_migrations_or_a_ledger_with_tables_go_through_alembic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = open_engine(f"sqlite:///{tmp_path / 'old.db'}")
    monkeypatch.setattr(migrations, "SQLITE_SCHEMA_REVISIONS", ("0001_initial.py",))
    assert not migrations._create_new_sqlite(engine)  # as if a migration had been added
    monkeypatch.undo()
    migrations.alembic_upgrade(engine, "0002")  # a ledger behind the head
    assert not migrations._create_new_sqlite(engine)  # it has tables: left to Alembic
    migrations.upgrade(engine)
    assert migrations.sqlite_schema(engine)[-1] == alembic_made(tmp_path)[-1]
    engine.dispose()
