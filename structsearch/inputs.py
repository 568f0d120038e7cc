"""What a user types that becomes a folder, a file, a database URL or a count, checked once at the
boundary. Each refusal is a one-line ``ValueError`` naming the value and what is accepted (the CLI
prints it and exits 2); ``argparse``'s types raise ``ArgumentTypeError`` instead.

Outputs never create folders a typo asked for:

* a file output (``graph --out/--json/--dot``) goes into an existing folder;
* a folder output (``--runs-dir``, ``train --out``, ``export --out``) is created, but only inside
  an existing folder, or anywhere inside ``--runs-dir`` (the tree structsearch owns: a run folder
  ``runs/shapes/collider`` may create ``runs/shapes``). ``/nonexistent/dir/run`` is refused.
* a folder or SQLite database a command writes in must be writable before any work starts
  (:func:`writable_folder`, :func:`writable_database`): a read-only runs folder is one line,
  not a traceback halfway through.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

NAME_PATTERN = r"[A-Za-z0-9._-]{1,100}"
_NAME = re.compile(NAME_PATTERN)


def check_name(name: str, what: str = "study name") -> str:
    """A name that becomes a folder (a study's): ``[A-Za-z0-9._-]{1,100}``, not ``.`` or ``..``."""
    if _NAME.fullmatch(name) is None or name in (".", ".."):
        shown = repr(name) if len(name) <= 60 else f"{name[:40]!r}... ({len(name)} characters)"
        raise ValueError(f"{what} {shown} is not allowed: use {NAME_PATTERN} (letters, digits, . _ -), not . or ..")
    return name


# ---- outputs -------------------------------------------------------------------------------------


def output_file(path: str, flag: str) -> Path:
    """A file to write: its folder must exist, and it must not be a folder itself."""
    target = Path(path)
    if target.is_dir():
        raise ValueError(f"{flag} {path}: is a folder; give a file path such as {target / 'graph.png'}")
    if not target.parent.is_dir():
        raise ValueError(f"{flag} {path}: folder {target.parent} does not exist; create it first or pick another path")
    return target


def output_folder(path: str | Path, flag: str, inside: str | Path | None = None) -> Path:
    """A folder to create (or reuse): inside an existing folder, or anywhere inside ``inside``."""
    target = Path(path)
    if target.exists():
        if not target.is_dir():
            raise ValueError(f"{flag} {path}: is a file, not a folder")
        return target
    if inside is not None and target.resolve().is_relative_to(Path(inside).resolve()):
        return target
    if not target.parent.is_dir():
        raise ValueError(f"{flag} {path}: folder {target.parent} does not exist; create it first or pick another path")
    return target


def writable_folder(path: str | Path, flag: str) -> Path:
    """A folder this command will write in: a nameless probe file is created and dropped in it (or,
    while it does not exist yet, in the folder that will hold it), so a read-only file system, a
    missing permission or an immutable folder is refused before any work. Nothing is left behind."""
    target = Path(path)
    existing, error = _probe(target)
    if error is not None:
        where = "write in it" if existing == target else f"create it in {existing}"
        raise ValueError(f"{flag} {path}: cannot {where}: {error}; {_WRITABLE}")
    return target


def writable_database(url: str, what: str = "storage URL") -> str:
    """A SQLite database this command will write: its file opened for writing (not written) and its
    folder writable (SQLite writes a journal beside it). Other databases are the server's business."""
    if not url.startswith("sqlite:///"):
        return url
    path = Path(url.removeprefix("sqlite:///"))
    existing, error = _probe(path.parent)
    if error is None and path.exists():
        try:
            os.close(os.open(path, os.O_RDWR))
        except OSError as err:
            existing, error = path, err.strerror
    if error is not None:
        raise ValueError(f"{what} {url}: cannot write in {existing}: {error}; {_WRITABLE}")
    return url


_WRITABLE = "give a folder you can write in, or make it writable"


def _probe(folder: Path) -> tuple[Path, str | None]:
    """The folder itself or, while it does not exist, its nearest existing parent, and the OS error
    writing a file there gives (None: writable)."""
    existing = next((p for p in (folder, *folder.parents) if p.is_dir()), Path("."))
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        return existing, err.strerror or str(err)
    return existing, None


# ---- database URLs (Optuna storage, MLflow stores) -------------------------------------------

DATABASE_URLS = "sqlite:///PATH/NAME.db or postgresql://USER:PASSWORD@HOST/DB"
# The module a missing driver raised ModuleNotFoundError for -> what installs it.
_INSTALL = {
    "psycopg": "pip install psycopg2-binary and write postgresql+psycopg2://..., or pip install 'psycopg[binary]'",
    "psycopg2": "pip install psycopg2-binary",
    "MySQLdb": "pip install pymysql and write mysql+pymysql://..., or pip install mysqlclient",
    "pymysql": "pip install pymysql",
}


def check_database_url(url: str, what: str = "storage URL", existing: bool = False) -> str:
    """A SQLAlchemy URL whose database and driver exist here; a SQLite file's folder must exist
    (and, with ``existing``, the file itself: reading a study never creates an empty database), and
    a database server must answer (:func:`_check_server`)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ValueError(f"{what} {url!r} is not a database URL; expected {DATABASE_URLS}") from None
    try:
        dialect = parsed.get_dialect()
    except NoSuchModuleError:
        backend = parsed.get_backend_name()
        raise ValueError(f"{what} {url!r}: unknown database {backend!r}; expected {DATABASE_URLS}") from None
    try:
        dialect.import_dbapi() if hasattr(dialect, "import_dbapi") else dialect.dbapi()
    except ImportError as err:
        module = getattr(err, "name", None) or dialect.driver
        install = _INSTALL.get(module, f"pip install {module}")
        raise ValueError(
            f"{what} {url!r} needs the database driver {module}, which is not installed: {install}"
        ) from None
    if parsed.get_backend_name() == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise ValueError(f"{what} {url!r} names no database file; expected sqlite:///PATH/NAME.db")
        path = Path(parsed.database)
        if not path.parent.is_dir():
            raise ValueError(
                f"{what} {url!r}: folder {path.parent} does not exist; create it first or pick another path"
            )
        if existing and not path.is_file():
            raise ValueError(f"{what} {url!r}: {path} does not exist; check the path, or create the study first")
    else:
        _check_server(url, parsed, what)
    return url


CONNECT_TIMEOUT_S = 10


def _check_server(url: str, parsed, what: str) -> None:
    """Connect once to a database server (PostgreSQL, MySQL) with a short timeout, so that a server
    that is down, a wrong user or password, or a missing database is one line, not a traceback."""
    import sqlalchemy as sa

    shown = url if parsed.password is None else parsed.render_as_string(hide_password=True)  # no password shown
    engine = sa.create_engine(parsed, connect_args={"connect_timeout": CONNECT_TIMEOUT_S}, poolclass=sa.pool.NullPool)
    try:
        with engine.connect():
            pass
    except sa.exc.DBAPIError as err:
        reason = " ".join(str(err.orig).split()) or type(err.orig).__name__  # the driver's message, on one line
        raise ValueError(
            f"{what} {shown!r}: cannot connect ({reason}); check the server, user, password and database name"
        ) from None
    finally:
        engine.dispose()


# ---- argparse types ------------------------------------------------------------------------------


def _argument(parse: Callable[[str], float], ok: Callable[[float], bool], accepted: str) -> Callable[[str], float]:
    """An argparse type: ``parse`` the text, refuse it unless ``ok``, naming what is ``accepted``."""

    def convert(text: str):
        try:
            value = parse(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"expected {accepted}, got {text!r}")
        return value

    return convert


count = _argument(int, lambda v: v >= 1, "an integer >= 1")  # --trials, --workers, --top
positive_number = _argument(float, lambda v: math.isfinite(v) and v > 0, "a number > 0")  # --scale
port = _argument(int, lambda v: 1 <= v <= 65535, "a port number 1-65535")
