"""adapter.store.engine's libpq parameters: bounded connects, TCP keepalives and server-side
statement and lock timeouts by default, each left to the URL when it names it."""

from __future__ import annotations

from sqlalchemy.engine import make_url

from adapter.config import DatabaseTimeouts
from adapter.store.engine import postgresql_connect_args


def test_defaults_bound_connecting_tcp_and_statements() -> None:
    args = postgresql_connect_args(make_url("postgresql+psycopg://adapter@db/adapter"),
                                   DatabaseTimeouts(connect=5, statement=30, lock=2.5))
    assert args["connect_timeout"] == 5
    assert args["keepalives"] == "1" and int(args["tcp_user_timeout"]) > 0
    assert args["options"] == "-c statement_timeout=30000 -c lock_timeout=2500"


def test_the_url_s_own_parameters_win() -> None:
    url = make_url("postgresql+psycopg://adapter@db/adapter?connect_timeout=9&tcp_user_timeout=0"
                   "&options=-c%20statement_timeout%3D0%20-csearch_path%3Dx")
    args = postgresql_connect_args(url, DatabaseTimeouts(connect=5, statement=30, lock=2))
    assert "connect_timeout" not in args and "tcp_user_timeout" not in args  # the URL's are used
    assert args["options"] == "-c statement_timeout=0 -csearch_path=x -c lock_timeout=2000"


def test_zero_means_no_statement_or_lock_timeout_and_connect_is_at_least_two_seconds() -> None:
    args = postgresql_connect_args(make_url("postgresql+psycopg://adapter@db/adapter"),
                                   DatabaseTimeouts(connect=1, statement=0, lock=0), schema="s1")
    assert args["connect_timeout"] == 2  # libpq's least
    assert args["options"] == "-csearch_path=s1"
