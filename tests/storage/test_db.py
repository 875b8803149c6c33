"""Database opening, pragmas and migrations (SQLite file; PostgreSQL when configured)."""
from __future__ import annotations

import os

import pytest
import sqlalchemy as sa

from storage.db import DatabaseError, Migration, apply_migrations, load_migrations, open_database, split_statements
from tests.storage.procs import proc_migrate, run_spawned


def test_migrations_are_numbered_and_recorded(db):
    migs = load_migrations()
    assert [m.version for m in migs] == list(range(1, len(migs) + 1))
    assert db.schema_version() == len(migs)
    with db.read() as c:
        tables = set(sa.inspect(c).get_table_names())
    assert {"users", "communities", "styles", "jobs", "packs", "stickers", "selfies", "artifacts", "blobs",
            "blob_refs", "schema_version"} <= tables


def test_reopening_applies_nothing_twice(db_url, db):
    assert apply_migrations(db) == []
    again = open_database(db_url)
    with again.read() as c:
        assert c.execute(sa.text("SELECT COUNT(*) FROM schema_version")).scalar_one() == len(load_migrations())
    again.dispose()


def test_sqlite_pragmas(tmp_path):
    db = open_database(f"sqlite:///{tmp_path / 'a.db'}")
    with db.read() as c:
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert c.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert c.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    with pytest.raises(sa.exc.IntegrityError):
        with db.write() as c:
            c.execute(sa.text("INSERT INTO selfies (user_id, blob_digest, created_at) VALUES (999, 'x', 0)"))
    db.dispose()


def test_write_transaction_rolls_back_on_error(db):
    with pytest.raises(RuntimeError):
        with db.write() as c:
            c.execute(sa.text("INSERT INTO users (platform, platform_user_id, created_at) VALUES ('t', '1', 0)"))
            raise RuntimeError("boom")
    with db.read() as c:
        assert c.execute(sa.text("SELECT COUNT(*) FROM users")).scalar_one() == 0


def test_two_processes_migrating_at_once(db_url, tmp_path):
    url = db_url
    go = tmp_path / "go"
    run_spawned([(proc_migrate, url, str(go)) for _ in range(3)], go)
    db = open_database(url, migrate=False)
    with db.read() as c:
        rows = c.execute(sa.text("SELECT version FROM schema_version ORDER BY version")).scalars().all()
    assert rows == [m.version for m in load_migrations()]
    db.dispose()


def test_failed_migration_leaves_no_trace(tmp_path):
    db = open_database(f"sqlite:///{tmp_path / 'm.db'}")
    migs = load_migrations()
    bad = migs + [Migration(len(migs) + 1, "9999_bad", "CREATE TABLE t_ok (a INTEGER);\nCREATE TABLE broken (;")]
    with pytest.raises(sa.exc.OperationalError):
        apply_migrations(db, bad)
    assert db.schema_version() == len(migs)
    with db.read() as c:
        assert "t_ok" not in sa.inspect(c).get_table_names()
    db.dispose()


def test_split_statements_drops_comments():
    assert split_statements("-- c;\nCREATE TABLE a (x INT);\n\nCREATE TABLE b (y INT);\n") == [
        "CREATE TABLE a (x INT)", "CREATE TABLE b (y INT)"]


@pytest.mark.parametrize("url,msg", [
    ("mysql://u@h/db", "unsupported"),
    ("sqlite://", "in-memory"),
    ("not a url", "not a valid"),
])
def test_bad_urls_are_explained(url, msg):
    with pytest.raises(DatabaseError, match=msg):
        open_database(url)


@pytest.mark.skipif(not os.environ.get("EMOJI3D_TEST_PG_URL"), reason="set EMOJI3D_TEST_PG_URL to test PostgreSQL")
def test_plain_postgresql_url_uses_psycopg3():
    url = os.environ["EMOJI3D_TEST_PG_URL"].replace("postgresql+psycopg://", "postgresql://", 1)
    db = open_database(url)
    assert db.dialect == "postgresql" and db.engine.dialect.driver == "psycopg"
    assert db.schema_version() == len(load_migrations())
    db.dispose()


def test_unreachable_or_impossible_databases_are_one_sentence(tmp_path):
    with pytest.raises(DatabaseError, match=r"cannot use the database postgresql://emoji3d:\*\*\*@127.0.0.1:9/x: .*refused"):
        open_database("postgresql://emoji3d:secret@127.0.0.1:9/x")  # nothing listens on the discard port
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(DatabaseError, match="cannot create the database folder"):
        open_database(f"sqlite:///{blocker / 'sub' / 'db.sqlite3'}")


def test_opening_an_up_to_date_database_does_not_wait_for_a_writer(tmp_path):
    """A read-only command must not queue behind a long write transaction (migrations are checked by a read)."""
    import sqlite3

    from storage import jobs
    from storage.db import SqliteOptions

    path = tmp_path / "db.sqlite3"
    open_database(f"sqlite:///{path}").dispose()
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # holds the write lock, as a long job-claiming writer would
    try:
        db = open_database(f"sqlite:///{path}", sqlite=SqliteOptions(busy_timeout_ms=300))
        assert jobs.list_jobs(db) == []
        db.dispose()
    finally:
        writer.execute("ROLLBACK")
        writer.close()
