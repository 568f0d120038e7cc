"""Download one file safely: stream to a temporary file, check it, then rename.

A file only ever appears under its final name after its check passed, so an interrupted or
corrupted download is never picked up later.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from urllib.request import urlopen

from tqdm import tqdm

log = logging.getLogger(__name__)

TIMEOUT_S = 30


def fetch(url: str, final: Path, check: Callable[[Path], None]) -> Path:
    """Download ``url`` to ``final``, with a progress bar.

    ``check(tmp_path)`` raises when the downloaded content is not the expected one; the temporary
    file is then deleted and the error propagates.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent)
    tmp = Path(tmp_name)
    log.info("downloading %s", url)
    try:
        with os.fdopen(fd, "wb") as out, urlopen(url, timeout=TIMEOUT_S) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=final.name, leave=False) as bar:
                while chunk := response.read(1 << 16):
                    out.write(chunk)
                    bar.update(len(chunk))
        check(tmp)
        os.replace(tmp, final)
        return final
    finally:
        tmp.unlink(missing_ok=True)


def fetch_first(urls: list[str], final: Path, check: Callable[[Path], None]) -> Path:
    """Try ``fetch`` from each mirror in turn; OSError listing every failure when none works."""
    errors = []
    for url in urls:
        try:
            return fetch(url, final, check)
        except Exception as err:  # network, disk or checksum failure: try the next mirror
            log.warning("download of %s failed: %s", url, err)
            errors.append(f"{url}: {err}")
    raise OSError("; ".join(errors))
