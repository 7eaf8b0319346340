"""Store fixtures shared by the store contract tests: every implementation, empty."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from keyturn.adapters.store.sql import SqlStore, create_engine, migrate
from keyturn.ports import Store
from keyturn.testing import InMemoryStore


def _sql_store(request: pytest.FixtureRequest, backend: str) -> SqlStore:
    if backend == "sqlite":
        tmp = request.getfixturevalue("tmp_path")
        url = f"sqlite:///{tmp / 'keyturn.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    engine = create_engine(url)
    migrate(engine)
    return SqlStore(engine)


POSTGRESQL = pytest.param("postgresql", marks=pytest.mark.integration, id="postgresql")


@pytest.fixture(params=["memory", "sqlite", POSTGRESQL])
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    """Each store implementation, empty."""
    if request.param == "memory":
        yield InMemoryStore()
        return
    sql = _sql_store(request, request.param)
    yield sql
    sql.close()


@pytest.fixture(params=["sqlite", POSTGRESQL])
def sql_store(request: pytest.FixtureRequest) -> Iterator[SqlStore]:
    """Each SQL backend, migrated and empty."""
    sql = _sql_store(request, request.param)
    yield sql
    sql.close()
