"""`boreal sql`: an interactive SQL shell and script runner on a borealdb connection.

    boreal sql [URL]                  interactive (readline, history in ~/.boreal_history)
    boreal sql [URL] -c "SQL; SQL"    run statements and exit
    boreal sql [URL] -f FILE          run a script (stdin too when it is not a terminal)

Results print as aligned tables with a row-count footer; NULL prints as NULL.
Dot commands (at the start of a line, outside a statement): .tables, .schema [TABLE],
.timer on|off, .help, .quit. Errors print `Error: <message>`; a script stops at
the first one and exits 1.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TextIO

from borealdb import errors

PROMPT = "boreal> "
CONTINUATION = "   ...> "
HISTORY_FILE = "~/.boreal_history"
WIDTH_SAMPLE_ROWS = 1000  # column widths come from the first rows; later rows may overflow

HELP = """\
.help                 this text
.quit / .exit         leave the shell
.tables               list tables and views
.schema [TABLE]       show CREATE statements (of every table, or of TABLE)
.timer on|off         print each statement's run time
SQL statements end with ';'. Ctrl-C cancels the statement being typed, Ctrl-D leaves."""


# ---- statements ---------------------------------------------------------------------


def is_blank_sql(text: str) -> bool:
    """True if `text` holds only whitespace, comments and semicolons."""
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace() or c == ";":
            i += 1
        elif text.startswith("--", i):
            j = text.find("\n", i)
            i = n if j < 0 else j + 1
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            i = n if j < 0 else j + 2
        else:
            return False
    return True


def split_statements(text: str) -> tuple[list[str], str]:
    """Split `text` into complete statements and the incomplete rest.

    A statement ends at a ';' outside strings, identifiers, comments and trigger
    bodies, as sqlite3.complete_statement decides. Blank statements are dropped."""
    statements: list[str] = []
    start = 0
    pos = text.find(";")
    while pos >= 0:
        candidate = text[start:pos + 1]
        if sqlite3.complete_statement(candidate):
            if not is_blank_sql(candidate):
                statements.append(candidate.strip())
            start = pos + 1
        pos = text.find(";", pos + 1)
    rest = text[start:]
    return statements, ("" if is_blank_sql(rest) else rest)


def script_statements(text: str) -> list[str]:
    """Every statement of a script; a last statement may omit its ';'."""
    statements, rest = split_statements(text)
    if rest:
        statements.append(rest.strip())
    return statements


# ---- formatting ---------------------------------------------------------------------


def format_value(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bytes):
        return "x'" + value.hex() + "'" if len(value) <= 32 else "x'" + value[:32].hex() + f"...' ({len(value)} bytes)"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def format_table(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Iterator[str]:
    """Lines of an aligned table with a row-count footer. Numbers align right.

    Widths come from the first WIDTH_SAMPLE_ROWS rows, so a large result is printed
    as it streams rather than held in memory."""
    it = iter(rows)
    sample = []
    for row in it:
        sample.append(row)
        if len(sample) >= WIDTH_SAMPLE_ROWS:
            break
    widths = [len(c) for c in columns]
    cells = [[format_value(v) for v in row] for row in sample]
    for row in cells:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(row: Sequence[Any], values: Sequence[Any] | None = None) -> str:
        parts = []
        for i, cell in enumerate(row):
            right = values is not None and isinstance(values[i], (int, float)) and not isinstance(values[i], bool)
            parts.append(cell.rjust(widths[i]) if right else cell.ljust(widths[i]))
        return " | ".join(parts).rstrip()

    yield line(list(columns))
    yield "-+-".join("-" * w for w in widths)
    count = 0
    for values, row in zip(sample, cells):
        count += 1
        yield line(row, values)
    for values in it:
        count += 1
        yield line([format_value(v) for v in values], values)
    yield f"({count} row{'' if count == 1 else 's'})"


# ---- the shell ----------------------------------------------------------------------


class Shell:
    """Runs statements and dot commands on a connection, printing to `out` / `err`."""

    def __init__(self, conn: Any, *, out: TextIO | None = None, err: TextIO | None = None, timer: bool = False):
        self.conn = conn
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.timer = timer
        self.quit = False

    def error(self, message: str) -> None:
        print(f"Error: {message}", file=self.err, flush=True)

    def run_statement(self, sql: str) -> bool:
        """Execute one statement and print its result. False (after printing) on error."""
        started = time.perf_counter()
        try:
            cur = self.conn.cursor()
            cur.execute(sql)
            if cur.description is not None:
                names = [d[0] for d in cur.description]
                for text in format_table(names, cur):
                    print(text, file=self.out)
            cur.close()
        except errors.Error as e:
            self.error(str(e) or type(e).__name__)
            return False
        finally:
            if self.timer:
                print(f"Run Time: {time.perf_counter() - started:.3f} s", file=self.out)
        self.out.flush()
        return True

    def run_dot(self, line: str) -> bool:
        """A dot command; False (after printing) on error."""
        words = line.strip().split()
        cmd, args = words[0].lower(), words[1:]
        if cmd in (".quit", ".exit", ".q"):
            self.quit = True
            return True
        if cmd == ".help":
            print(HELP, file=self.out)
            return True
        if cmd == ".timer":
            if len(args) != 1 or args[0].lower() not in ("on", "off"):
                self.error("usage: .timer on|off")
                return False
            self.timer = args[0].lower() == "on"
            return True
        if cmd == ".tables":
            return self._list(
                "SELECT name FROM sqlite_schema WHERE type IN ('table', 'view') "
                "AND name NOT LIKE 'sqlite_%' ORDER BY name", ()
            )
        if cmd == ".schema":
            if len(args) > 1:
                self.error("usage: .schema [TABLE]")
                return False
            where = "AND tbl_name = ? " if args else ""
            return self._list(
                "SELECT sql || ';' FROM sqlite_schema WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%' "
                f"{where}ORDER BY tbl_name, type DESC, name", tuple(args)
            )
        self.error(f"unknown command {words[0]} (try .help)")
        return False

    def _list(self, sql: str, params: tuple) -> bool:
        try:
            for (value,) in self.conn.cursor().execute(sql, params):
                print(value, file=self.out)
        except errors.Error as e:
            self.error(str(e))
            return False
        return True

    def run_script(self, text: str) -> int:
        """Run a script (statements and dot commands at line starts); 1 at the first error."""
        pending = ""
        for line in text.splitlines(keepends=True):
            if not pending.strip() and line.lstrip().startswith("."):
                if not self.run_dot(line):
                    return 1
                if self.quit:
                    return 0
                continue
            pending += line
            statements, pending = split_statements(pending)
            for sql in statements:
                if not self.run_statement(sql):
                    return 1
        if pending.strip():
            if not self.run_statement(pending.strip()):
                return 1
        return 0

    def interact(self, input_fn: Any = input) -> int:
        """The read-eval-print loop; returns 0 at .quit or end of input."""
        print(f"borealdb shell on {getattr(self.conn, 'url', '?')}. Enter .help for help.", file=self.out)
        pending = ""
        while not self.quit:
            try:
                line = input_fn(CONTINUATION if pending else PROMPT)
            except EOFError:
                print(file=self.out)
                break
            except KeyboardInterrupt:
                print("^C" if not pending else "\n(statement cancelled)", file=self.out)
                pending = ""
                continue
            if not pending and line.strip().startswith("."):
                self.run_dot(line)
                continue
            pending += line + "\n"
            statements, pending = split_statements(pending)
            try:
                for sql in statements:
                    self.run_statement(sql)
            except KeyboardInterrupt:
                # The cursor of the interrupted statement is dropped; its stream is cancelled
                # by the next statement on the connection.
                print("\n(interrupted)", file=self.out)
        return 0


def _setup_readline() -> None:
    try:
        import atexit
        import readline
    except ImportError:
        return
    path = os.path.expanduser(HISTORY_FILE)
    try:
        readline.read_history_file(path)
    except OSError:
        pass
    readline.set_history_length(1000)

    def save() -> None:
        try:
            readline.write_history_file(path)
        except OSError:
            pass

    atexit.register(save)


def main(url: str | None = None, *, command: str | None = None, file: str | None = None,
         timer: bool = False, stdin: TextIO | None = None, out: TextIO | None = None,
         err: TextIO | None = None) -> int:
    """Connect and run: `command`, else `file`, else stdin (a script when not a terminal,
    else the interactive shell). Returns the exit code: 0, or 1 after an error."""
    import borealdb

    stdin = stdin or sys.stdin
    err = err or sys.stderr
    script: str | None = command
    if script is None and file is not None:
        if file == "-":
            script = stdin.read()
        else:
            try:
                with open(file, encoding="utf-8") as f:
                    script = f.read()
            except OSError as e:
                print(f"Error: cannot read {file}: {e.strerror}", file=err)
                return 1
    interactive = script is None and stdin.isatty()
    if script is None and not interactive:
        script = stdin.read()
    try:
        conn = borealdb.connect(url, client_name="boreal-sql")
    except errors.Error as e:
        print(f"Error: {e}", file=err)
        return 1
    shell = Shell(conn, out=out, err=err, timer=timer)
    try:
        if interactive:
            _setup_readline()
            return shell.interact()
        return shell.run_script(script or "")
    finally:
        conn.close()
