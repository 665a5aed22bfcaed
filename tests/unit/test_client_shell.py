"""`boreal sql` without a server: statement splitting, table formatting, scripts, CLI wiring.

The Shell runs on any DB-API connection raising borealdb errors; here an adapter over
the standard library's sqlite3 (so no server is needed to test the shell's behaviour).
"""

from __future__ import annotations

import io
import sqlite3

import pytest

from borealdb import errors, shell
from borealdb.nodes import cli


@pytest.mark.parametrize("text, statements, rest", [
    ("select 1;", ["select 1;"], ""),
    ("select 1; select 2;", ["select 1;", "select 2;"], ""),
    ("select 'a;b'; select \"c;d\";", ["select 'a;b';", "select \"c;d\";"], ""),
    ("select 1 -- x;\n;", ["select 1 -- x;\n;"], ""),
    ("select /* ; */ 1;", ["select /* ; */ 1;"], ""),
    ("select 1; select 2", ["select 1;"], " select 2"),
    ("select 'unterminated;", [], "select 'unterminated;"),
    (";;  ; -- only comments\n", [], ""),
    ("CREATE TRIGGER tr AFTER INSERT ON t BEGIN INSERT INTO u VALUES (1); END; select 1;",
     ["CREATE TRIGGER tr AFTER INSERT ON t BEGIN INSERT INTO u VALUES (1); END;", "select 1;"], ""),
])
def test_split_statements(text, statements, rest):
    assert shell.split_statements(text) == (statements, rest)


def test_script_statements_takes_a_last_statement_without_semicolon():
    assert shell.script_statements("select 1; select 2") == ["select 1;", "select 2"]
    assert shell.script_statements("select 1; -- done") == ["select 1;"]


def test_is_blank_sql():
    assert shell.is_blank_sql("  ; -- x\n /* y */ ;")
    assert not shell.is_blank_sql("-- x\nselect 1")


def test_format_table():
    lines = list(shell.format_table(["id", "name", "data"], [(1, "ada", None), (22, None, b"\x01\x02")]))
    assert lines == [
        "id | name | data",
        "---+------+--------",
        " 1 | ada  | NULL",
        "22 | NULL | x'0102'",
        "(2 rows)",
    ]
    assert list(shell.format_table(["x"], []))[-1] == "(0 rows)"
    assert list(shell.format_table(["x"], [(1.5,)]))[-1] == "(1 row)"


def test_format_table_streams_past_the_width_sample(monkeypatch):
    monkeypatch.setattr(shell, "WIDTH_SAMPLE_ROWS", 2)
    lines = list(shell.format_table(["v"], [("a",), ("b",), ("a much longer value",)]))
    assert lines[4] == "a much longer value" and lines[-1] == "(3 rows)"


class SqliteAdapter:
    """sqlite3 with borealdb's error classes: a stand-in connection for the shell."""

    url = "sqlite://memory"

    def __init__(self):
        self.db = sqlite3.connect(":memory:", isolation_level=None)

    def cursor(self):
        adapter = self

        class Cursor:
            def __init__(self):
                self._cur = adapter.db.cursor()

            def execute(self, sql, params=()):
                try:
                    self._cur.execute(sql, params)
                except sqlite3.Error as e:
                    raise errors.OperationalError(str(e)) from None
                return self

            @property
            def description(self):
                return self._cur.description

            def __iter__(self):
                return iter(self._cur)

            def close(self):
                self._cur.close()

        return Cursor()


def run_script(text, **kwargs):
    out, err = io.StringIO(), io.StringIO()
    rc = shell.Shell(SqliteAdapter(), out=out, err=err, **kwargs).run_script(text)
    return rc, out.getvalue(), err.getvalue()


def test_script_runs_statements_and_dot_commands():
    rc, out, err = run_script(
        "create table t (id integer, name text);\n"
        "insert into t values (1, 'a;b'), (2, NULL);\n"
        ".tables\n"
        ".schema t\n"
        "select * from t order by id\n"
    )
    assert (rc, err) == (0, "")
    assert out.splitlines() == [
        "t",
        "CREATE TABLE t (id integer, name text);",
        "id | name",
        "---+-----",
        " 1 | a;b",
        " 2 | NULL",
        "(2 rows)",
    ]


def test_script_stops_at_the_first_error():
    rc, out, err = run_script("select 1 as x;\nselect * from nope;\nselect 2 as y;")
    assert rc == 1
    assert err == "Error: no such table: nope\n"
    assert "x" in out and "y" not in out


def test_dot_command_errors_and_quit():
    assert run_script(".nonsense\n")[:1] == (1,)
    assert "unknown command .nonsense" in run_script(".nonsense\n")[2]
    assert run_script(".timer maybe\n")[0] == 1
    rc, out, _ = run_script(".quit\nselect * from nope;")
    assert rc == 0
    rc, out, _ = run_script(".help\n")
    assert rc == 0 and ".schema" in out


def test_timer():
    rc, out, _ = run_script(".timer on\nselect 1;\n")
    assert rc == 0 and "Run Time: " in out


def test_interactive_loop_continues_lines_and_survives_errors():
    lines = iter(["select", " 1 as one;", "select * from nope;", ".tables", "select 2 as two;"])
    prompts = []

    def fake_input(prompt):
        prompts.append(prompt)
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    out, err = io.StringIO(), io.StringIO()
    assert shell.Shell(SqliteAdapter(), out=out, err=err).interact(fake_input) == 0
    assert prompts[:3] == [shell.PROMPT, shell.CONTINUATION, shell.PROMPT]
    assert "one" in out.getvalue() and "two" in out.getvalue()
    assert err.getvalue() == "Error: no such table: nope\n"


def test_main_reports_connection_errors_without_traceback(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BOREAL_URL", raising=False)
    err = io.StringIO()
    assert shell.main("http://nope", command="select 1", err=err) == 1
    assert err.getvalue().startswith("Error: bad URL")
    err = io.StringIO()
    assert shell.main("boreal://127.0.0.1:1/", file=str(tmp_path / "missing.sql"), err=err) == 1
    assert err.getvalue().startswith("Error: cannot read")


def test_cli_sql_arguments(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BOREAL_URL", raising=False)
    assert cli.main(["sql", "-c", "select 1", "-f", "x.sql"]) == 1
    assert "either -c or -f" in capsys.readouterr().err
    assert cli.main(["sql", "-c", "select 1"]) == 1
    assert "boreal up" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main(["sql", "--help"])
    assert e.value.code == 0
    assert "usage: boreal sql" in capsys.readouterr().out


def test_cluster_state_writer_address(tmp_path):
    import os

    from borealdb.nodes.cluster.local import ClusterError, ClusterState, NodeRecord

    def record(role, pid):
        return NodeRecord(node_id="w-1", az="a", role=role, address="127.0.0.1:7300", pid=pid,
                          data_dir=str(tmp_path), log_path=str(tmp_path / "log"))

    with pytest.raises(ClusterError, match="no writer"):
        ClusterState(tmp_path, [record("storage", None)]).writer_address()
    with pytest.raises(ClusterError, match="not running"):
        ClusterState(tmp_path, [record("writer", None)]).writer_address()
    # A live pid that is not a boreal node does not count either (pid reuse).
    with pytest.raises(ClusterError, match="not running"):
        ClusterState(tmp_path, [record("writer", os.getpid())]).writer_address()
