"""The start-up check of the SQLite version the ledger's batch store needs."""

import sqlite3
from types import SimpleNamespace

import django.db

from translation.checks import sqlite_new_enough


def run_check(monkeypatch, vendor: str, version: tuple[int, int, int]):
    monkeypatch.setattr(django.db, "connections", {"default": SimpleNamespace(vendor=vendor)})
    monkeypatch.setattr(sqlite3, "sqlite_version_info", version)
    monkeypatch.setattr(sqlite3, "sqlite_version", ".".join(map(str, version)))
    return sqlite_new_enough(databases=["default"])


def test_an_sqlite_older_than_3_35_is_refused_with_the_reason(monkeypatch):
    [error] = run_check(monkeypatch, "sqlite", (3, 34, 1))
    assert error.id == "translation.E001"
    assert "SQLite 3.34.1 is too old" in error.msg and "RETURNING" in error.msg


def test_sqlite_3_35_and_other_databases_pass(monkeypatch):
    assert run_check(monkeypatch, "sqlite", (3, 35, 0)) == []
    assert run_check(monkeypatch, "postgresql", (3, 7, 0)) == []
