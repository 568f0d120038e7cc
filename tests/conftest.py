from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import tempfile

import pytest
import torch

# The suite runs one worker per core (pytest-xdist, pyproject.toml), and oversubscribed threads made
# steps up to 10x slower on a 2-core machine: one thread per worker, and per process it starts.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")

MNIST_DIR = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


@pytest.fixture
def mnist_dir() -> pathlib.Path:
    """The real MNIST files beside the checkout (skips when this machine has none)."""
    if not (MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"real MNIST not found at {MNIST_DIR}")
    return MNIST_DIR


# ---- a PostgreSQL server for the session (tests/test_postgres.py) -------------------------------

PG_INSTALL = "apt-get install postgresql (Debian/Ubuntu), or put initdb and pg_ctl on PATH"


def _pg_bin() -> pathlib.Path | None:
    """The folder of initdb and pg_ctl: Debian keeps them off PATH, in /usr/lib/postgresql/<version>/bin."""
    debian = sorted(pathlib.Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: _version(p.parent.name))
    on_path = [pathlib.Path(found).parent for found in [shutil.which("pg_ctl")] if found]
    for folder in [*reversed(debian), *on_path]:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    return None


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".") if part.isdigit())


class PostgresServer:
    """A throwaway PostgreSQL cluster in ``root``, reachable only on a unix socket there.

    As root (CI), PostgreSQL refuses to run, so the server runs as the ``postgres`` user that
    Debian's package creates; the clients (the tests, structsearch) connect as any user."""

    def __init__(self, bin_dir: pathlib.Path, root: pathlib.Path) -> None:
        self.bin, self.root = bin_dir, root
        self.data, self.socket, self.log = root / "data", root / "socket", root / "server.log"
        self.as_server = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def start(self) -> None:
        self.socket.mkdir()
        if self.as_server:
            shutil.chown(self.root, "postgres")
            shutil.chown(self.socket, "postgres")
        self._server("initdb", "-D", self.data, "-U", "structsearch", "--auth=trust", "--no-sync", "--no-instructions")
        options = f"-c listen_addresses='' -k {self.socket} -F"  # no TCP port; -F: no fsync, a test cluster
        self._server("pg_ctl", "start", "-w", "-D", self.data, "-l", self.log, "-o", options)

    def stop(self) -> None:
        self._server("pg_ctl", "stop", "-w", "-m", "fast", "-D", self.data)

    def create_database(self, name: str) -> str:
        """A new empty database: its SQLAlchemy URL (psycopg 3, the ``[postgres]`` extra's driver)."""
        self._run([self.bin / "createdb", "-h", self.socket, "-U", "structsearch", name])
        return f"postgresql+psycopg://structsearch@/{name}?host={self.socket}"

    def _server(self, program: str, *args) -> None:
        self._run([*self.as_server, self.bin / program, *args])

    def _run(self, argv: list) -> None:
        proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            log = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(map(str, argv))} failed: {proc.stderr.strip()}\n{log}")


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server for the session. Skips only where no server binaries are found; a missing
    driver or a failing server is an error (the ``[test]`` extra installs the driver)."""
    bin_dir = _pg_bin()
    if bin_dir is None:
        pytest.skip(f"no PostgreSQL server binaries (initdb, pg_ctl) found: {PG_INSTALL}")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.fail("the PostgreSQL driver psycopg is not installed: pip install -e '.[test]' (or '.[postgres]')")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        pytest.fail("running as root, the server needs runuser (util-linux) to run as the postgres user")
    server = PostgresServer(bin_dir, pathlib.Path(tempfile.mkdtemp(prefix="structsearch-pg-")))
    try:
        server.start()
        yield server
    finally:
        if server.data.exists() and (server.data / "postmaster.pid").exists():
            server.stop()
        shutil.rmtree(server.root, ignore_errors=True)


def pytest_collection_modifyitems(config, items) -> None:
    """The README walk (tests/test_readme.py) is the longest file by minutes: scheduled first, its
    workers run it while the others share the rest, instead of starting it last and waiting on it."""
    items.sort(key=lambda item: item.path.name != "test_readme.py")  # stable: the rest keep their order


README_WALK = "tests/test_readme.py::test_the_readme_section_runs_on_a_fresh_folder["


def pytest_xdist_make_scheduler(config, log):
    """``--dist loadfile`` (pyproject's addopts), but each README section's walk is a work unit of its
    own, so that the sections, minutes each, spread over the workers (pytest-xdist's hook)."""
    if config.getoption("dist") != "loadfile":
        return None  # another --dist asked for: xdist's own scheduler
    from xdist.scheduler import LoadFileScheduling

    class FilesAndReadmeSections(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return nodeid if nodeid.startswith(README_WALK) else super()._split_scope(nodeid)

    return FilesAndReadmeSections(config, log)
