"""A web UI (MLflow's, optuna-dashboard's) served by a child process that never outlives us.

The server runs in a session of its own (``start_new_session``), so a Ctrl-C in the terminal
reaches only us, and we stop the server's whole process group on the way out: a normal exit,
Ctrl-C (SIGINT) and SIGTERM all end in :func:`stop_group`, which frees the port. Only ``kill -9``
of structsearch can leave the server running (nothing can catch it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
STOP_GRACE_S = 10  # SIGTERM, then SIGKILL for what is left of the group after this long


def check_port_free(port: int) -> None:
    """Refuse a port another process holds on 127.0.0.1 (one line here, not a server's traceback later)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError as err:
            raise ValueError(f"port {port} on {HOST} is in use ({err.strerror}); pick another with --port N") from None


@contextlib.contextmanager
def server_group(cmd: Sequence[str], env: Mapping[str, str] | None = None) -> Iterator[subprocess.Popen]:
    """Run ``cmd`` (with environment ``env``, default ours) as the leader of a new process group;
    SIGTERM raises KeyboardInterrupt inside the block (as SIGINT does), and the group is stopped
    however the block ends."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    proc = subprocess.Popen(list(cmd), env=None if env is None else dict(env), start_new_session=True)
    try:
        yield proc
    finally:
        stop_group(proc)
        signal.signal(signal.SIGTERM, previous)


def stop_group(proc: subprocess.Popen, grace: float = STOP_GRACE_S) -> None:
    """SIGTERM the process group ``proc`` leads, wait up to ``grace`` seconds for every member to
    exit, then SIGKILL what remains; ``proc`` is reaped."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while _group_alive(proc) and time.monotonic() < deadline:
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _group_alive(proc: subprocess.Popen) -> bool:
    """Whether the leader ``proc`` or any member of its group is still there. The leader is reaped
    first: once it is, a signal to the group reaches only the other members."""
    if proc.poll() is None:
        return True
    try:
        os.killpg(proc.pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_until_answering(url: str, proc: subprocess.Popen, timeout: float) -> bool:
    """Poll ``url`` until it answers HTTP (any status), the server exits, or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return True
        except urllib.error.HTTPError:  # it answered, with an error status
            return True
        except (urllib.error.URLError, OSError):
            time.sleep(0.25)
    return False
