"""Opening the study database: URLs as users write them, and clear errors for the ones that cannot be opened."""

from __future__ import annotations

import importlib.util

import pytest

from autopeft.errors import StudyError
from autopeft.study.storage import open_storage, storage_url


def _installed_postgres_driver() -> str:
    return "psycopg" if importlib.util.find_spec("psycopg") else "psycopg2"


def test_a_postgres_url_without_a_driver_gets_the_installed_one():
    driver = _installed_postgres_driver()
    assert storage_url("postgresql://u:pw@db:5432/x") == f"postgresql+{driver}://u:pw@db:5432/x"
    assert storage_url("postgres://u@db/x") == f"postgresql+{driver}://u@db/x"  # the short form many hosts print
    assert storage_url("postgresql+psycopg2://u@db/x") == "postgresql+psycopg2://u@db/x"  # a driver given is kept
    assert storage_url("runs/study.db") == "sqlite:///runs/study.db"


def test_a_plain_postgresql_url_opens_the_server(postgres_url, study_name):
    import optuna

    plain = "postgresql://" + postgres_url.split("://", 1)[1]
    optuna.create_study(study_name=study_name, storage=open_storage(plain))
    assert study_name in [s.study_name for s in optuna.get_all_study_summaries(open_storage(postgres_url))]


@pytest.mark.parametrize("url, said", [
    ("notadb://x", r"SQLAlchemy knows no database 'notadb'; use a URL such as sqlite:///autopeft.db"),
    ("sqlite:///{tmp}/no/such/folder/s.db", r"cannot open the database \(unable to open database file\); check "
                                             r"that the file's folder exists"),
    ("postgresql+psycopg2://u:secret@127.0.0.1:1/x", r"postgresql\+psycopg2://u:\*\*\*@127.0.0.1:1/x: cannot open "
                                                     r"the database \(connection to server .*refused.*\); check that "
                                                     r"the server is running"),
])
def test_a_database_that_cannot_be_opened_is_named_with_the_fix(tmp_path, url, said):
    with pytest.raises(StudyError, match=r"^--storage \(or \$AUTOPEFT_STORAGE\): .*" + said) as caught:
        open_storage(url.format(tmp=tmp_path))
    assert "secret" not in str(caught.value)


@pytest.mark.skipif(importlib.util.find_spec("MySQLdb") is not None, reason="MySQL's default driver is installed")
def test_a_missing_driver_is_named_with_the_fix():
    with pytest.raises(StudyError, match=r"mysql://u@h/x: the database driver for 'mysql' is not installed \(No "
                                         r"module named 'MySQLdb'\); install it \(e.g. .*pymysql for mysql\+pymysql"):
        open_storage("mysql://u@h/x")
