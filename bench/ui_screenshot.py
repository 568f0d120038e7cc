"""Screenshots of the two UIs on a small real study, for the README (issue 16 items 12 and 13).

    python bench/ui_screenshot.py                       # docs/images/mlflow-compare.png, optuna-dashboard.png
    python bench/ui_screenshot.py --runs-dir /tmp/shots --trials 5 --steps 300

Trains a small search on `shapes` (preset quick) unless the runs folder already holds the study,
then starts `structsearch ui` and `structsearch dashboard` as a user would, reads the URL each one
prints, photographs it with headless Chromium (Debian's `chromium`), stops the command with SIGTERM
and checks that its port is free again.

MLflow's page goes through Chromium's DevTools protocol (over aiohttp's websocket client, which
mlflow depends on) rather than `chromium --screenshot`, for one reason: on a fresh browser profile
MLflow 3.17 opens its assistant panel over a third of the page once. The protocol lets us set the
UI's own flags for "opened once, then closed" in localStorage before the page loads.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# MLflow 3.17's useLocalStorage keys are `<key>_v<version>`, values JSON.
CLOSED_ASSISTANT = {"mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true", "mlflow.assistant.panelOpen_v1": "false"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def structsearch(*args: str, **popen) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    return subprocess.Popen([sys.executable, "-m", "structsearch", *args], env=env, cwd=ROOT, **popen)


def train(runs: Path, study: str, trials: int, steps: int) -> None:
    if (runs / study / "study.db").exists():
        print(f"using the study {study} already in {runs}")
        return
    argv = ["optimize", "--dataset", "shapes", "--preset", "quick", "--trials", str(trials), "--steps", str(steps)]
    argv += ["--n-eval", "500", "--study", study, "--runs-dir", str(runs)]
    started = time.time()
    if structsearch(*argv).wait() != 0:
        sys.exit("the study did not train")
    print(f"trained {trials} trials in {time.time() - started:.0f} s")


def serve_and_read_url(args: list[str], marker: str, timeout: float = 240) -> tuple[subprocess.Popen, str]:
    """Start a structsearch UI command; return it and the first URL printed after a line containing ``marker``."""
    proc = structsearch(*args, stdout=subprocess.PIPE, text=True, bufsize=1)
    deadline, armed = time.time() + timeout, False
    for line in proc.stdout:
        print(line, end="")
        if armed and line.strip().startswith("http"):
            threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep the pipe drained
            return proc, line.strip()
        armed = armed or marker in line
        if time.time() > deadline:
            break
    proc.kill()
    sys.exit(f"{' '.join(args)} printed no URL after {marker!r}")


def stop(proc: subprocess.Popen, port: int) -> None:
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=30)
    print(f"SIGTERM: exit code {code}; port {port} {'free' if port_is_free(port) else 'STILL HELD'}")


def plain_screenshot(url: str, out: Path, size: str) -> None:
    with tempfile.TemporaryDirectory() as profile:
        cmd = [
            "chromium",
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--screenshot={out}",
            f"--window-size={size}",
        ]
        subprocess.run([*cmd, "--virtual-time-budget=15000", url], check=True, capture_output=True)


class Page:
    """One Chromium tab over the DevTools protocol: call a method, evaluate JS, click, type."""

    def __init__(self, ws) -> None:
        self.ws, self.ids = ws, iter(range(1, 1_000_000))

    async def call(self, method: str, **params) -> dict:
        ident = next(self.ids)
        await self.ws.send_json({"id": ident, "method": method, "params": params})
        async for msg in self.ws:
            reply = json.loads(msg.data)
            if reply.get("id") == ident:
                return reply.get("result", {})
        raise RuntimeError(f"the browser closed during {method}")

    async def evaluate(self, expression: str):
        return (await self.call("Runtime.evaluate", expression=expression, returnByValue=True))["result"].get("value")

    async def click(self, x: float, y: float) -> None:
        for kind in ("mousePressed", "mouseReleased"):
            await self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)
        await asyncio.sleep(0.5)

    async def click_js(self, finder: str) -> bool:
        """Click the centre of the element the JS expression ``finder`` returns (False when none)."""
        box = await self.evaluate(
            f"(() => {{ const e = {finder}; if (!e) return null; const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; }})()"
        )
        if box:
            await self.click(*box)
        return bool(box)

    async def type(self, text: str) -> None:
        await self.call("Input.insertText", text=text)
        await asyncio.sleep(0.5)

    async def key(self, name: str, code: int) -> None:
        for kind in ("keyDown", "keyUp"):
            await self.call("Input.dispatchKeyEvent", type=kind, key=name, code=name, windowsVirtualKeyCode=code)
        await asyncio.sleep(0.5)

    async def wait_for_text(self, text: str, timeout: float = 120) -> None:
        for _ in range(int(timeout)):
            if await self.evaluate(f"document.body.innerText.includes({text!r})"):
                return
            await asyncio.sleep(1)
        raise RuntimeError(f"the page never showed {text!r}")


@contextlib.asynccontextmanager
async def browser_page(width: int, height: int):
    """A headless Chromium on a fresh profile, its first tab as a :class:`Page` of ``width`` x ``height``."""
    import aiohttp

    port = free_port()
    with tempfile.TemporaryDirectory() as profile:
        browser = subprocess.Popen(
            ["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--remote-debugging-port={port}"]
            + [f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            async with aiohttp.ClientSession() as http, http.ws_connect(_page_socket(port), max_msg_size=0) as ws:
                page = Page(ws)
                await page.call(
                    "Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False
                )
                yield page
        finally:
            browser.terminate()
            browser.wait()


# The parallel-coordinates plot starts on the first three differing params (the edges, sorted
# first) and the first metric (loss/d); the picture swaps that metric for the objective.
METRICS_SELECT = "[...document.querySelectorAll('div')].find(e => e.textContent === 'Metrics:').nextElementSibling"
TAG_CLOSE = "[...document.querySelectorAll('span')].find(e => e.textContent === 'loss/d')?.parentElement.querySelector('[aria-label=close], .anticon-close, svg')"
DIFF_ONLY = "[...document.querySelectorAll('label, span, div')].find(e => e.textContent === 'Show diff only')?.parentElement.querySelector('button, [role=switch]')"


async def mlflow_screenshot(url: str, origin_page: str, out: Path, width: int, height: int, objective: str) -> None:
    """Open ``origin_page`` (same origin, no app), set :data:`CLOSED_ASSISTANT`, load ``url``, put
    ``objective`` on the plot and show only the params that differ, save a PNG."""
    async with browser_page(width, height) as page:
        await page.call("Page.navigate", url=origin_page)
        await asyncio.sleep(2)
        await page.evaluate("".join(f"localStorage.setItem({k!r}, {v!r});" for k, v in CLOSED_ASSISTANT.items()))
        await page.call("Page.navigate", url=url)
        await page.wait_for_text("Run details")
        await asyncio.sleep(3)
        await page.click_js(METRICS_SELECT)
        await page.type(objective)
        await page.key("Enter", 13)
        await page.key("Escape", 27)
        await page.click_js(TAG_CLOSE)
        await page.click_js(DIFF_ONLY)
        await asyncio.sleep(4)  # the plot redraws
        await page.evaluate("document.querySelectorAll('*').forEach(e => { if (e.scrollLeft) e.scrollLeft = 0; })")
        await asyncio.sleep(1)
        shot = await page.call("Page.captureScreenshot", format="png")
    out.write_bytes(base64.b64decode(shot["data"]))


def _page_socket(port: int, timeout: float = 30) -> str:
    """The DevTools websocket of the browser's first page."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as reply:
                pages = [t for t in json.load(reply) if t.get("type") == "page"]
            if pages:
                return pages[0]["webSocketDebuggerUrl"]
        except OSError:
            pass
        time.sleep(0.3)
    sys.exit("chromium's DevTools did not answer")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs-dir", type=Path, help="runs folder (default: a temporary one)")
    parser.add_argument("--study", default="screenshot")
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    args = parser.parse_args()
    if shutil.which("chromium") is None:
        sys.exit("no chromium here: apt-get install -y chromium")
    runs = args.runs_dir or Path(tempfile.mkdtemp(prefix="ui-shot-")) / "runs"
    args.out.mkdir(parents=True, exist_ok=True)
    train(runs, args.study, args.trials, args.steps)

    port = free_port()
    ui, url = serve_and_read_url(
        ["ui", "--runs-dir", str(runs), "--study", args.study, "--port", str(port)], "best runs compared"
    )
    try:
        out = args.out / "mlflow-compare.png"
        asyncio.run(mlflow_screenshot(url, f"http://127.0.0.1:{port}/health", out, 1400, 1600, "objective/struct_bic"))
        print(f"wrote {out}")
    finally:
        stop(ui, port)

    port = free_port()
    dashboard, url = serve_and_read_url(
        ["dashboard", "--runs-dir", str(runs), "--study", args.study, "--port", str(port)], f"study {args.study}"
    )
    try:
        out = args.out / "optuna-dashboard.png"
        plain_screenshot(url, out, "1400,900")
        print(f"wrote {out}")
    finally:
        stop(dashboard, port)


if __name__ == "__main__":
    main()
