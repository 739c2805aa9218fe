"""Screenshot every page of the app: start it, drive headless Chromium over the DevTools protocol.

    python scripts/screenshots.py [--port 8599] [--out screenshots] [--run RUN_ID] [--concept seizure]

Starts `streamlit run app.py` (with the caller's SPARSEBIN_HOME / SPARSEBIN_DATA),
starts Chromium headless with a remote-debugging port, opens each page, waits
until the page's own content is on screen, every plotly chart is drawn and
Streamlit's "Running..." status is gone, and saves <out>/<page>.png. Prints how long each page took to be ready.
"""

import argparse
import asyncio
import base64
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import websockets

PROJECT = Path(__file__).resolve().parent.parent
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]
# page url path -> text that appears only once the page has rendered its content
PAGES = {
    "home": ("", "Latest runs"),
    "train": ("train", "Jobs"),
    "compare": ("compare", "the method's six questions"),
    "bits": ("bits", "Concepts nearest its decoder direction"),
    "concepts": ("concepts", "neighbour lists share"),
    "map": ("map", "Colour by"),
    "data": ("data", "Your own embeddings"),
}
READY = """(() => {
  const main = document.querySelector('[data-testid="stMain"]');
  const status = document.querySelector('[data-testid="stStatusWidget"]');
  const running = status && /Running/i.test(status.innerText);
  const text = main ? main.innerText : '';
  const charts = document.querySelectorAll('[data-testid="stPlotlyChart"]');
  const drawn = [...charts].filter((chart) => chart.querySelector('.main-svg')).length;
  const loading = document.querySelector('[data-testid="stSkeleton"]');
  const ready = text.includes(%s) && !running && !loading && drawn === charts.length;
  return JSON.stringify({ready: ready, exception: text.includes('Traceback')});
})()"""


def wait_for_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


class DevTools:
    """A minimal DevTools-protocol client on one page target."""

    def __init__(self, socket):
        self.socket = socket
        self.ids = itertools.count(1)

    async def call(self, method: str, **params) -> dict:
        message_id = next(self.ids)
        await self.socket.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            message = json.loads(await self.socket.recv())
            if message.get("id") == message_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    async def evaluate(self, expression: str):
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")


async def capture(devtools: DevTools, url: str, marker: str, path: Path, timeout: float, settle: float) -> float:
    """Open url, wait for marker text with no script running, screenshot; return seconds until ready."""
    start = time.monotonic()
    await devtools.call("Page.navigate", url=url)
    await asyncio.sleep(0.5)  # let the old page go before polling the new one
    state = {}
    while time.monotonic() - start < timeout:
        state = json.loads(await devtools.evaluate(READY % json.dumps(marker)) or "{}")
        if state.get("ready"):
            break
        await asyncio.sleep(0.2)
    else:
        print(f"  {path.stem}: '{marker}' did not appear within {timeout:.0f} s; capturing anyway", file=sys.stderr)
    ready = time.monotonic() - start
    await asyncio.sleep(settle)  # plotly draws after the script finishes
    shot = await devtools.call("Page.captureScreenshot", format="png")
    path.write_bytes(base64.b64decode(shot["data"]))
    if state.get("exception"):
        print(f"  {path.stem}: the page shows a traceback", file=sys.stderr)
    return ready


async def drive(debug_port: int, app_url: str, out: Path, queries: dict, args) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{debug_port}/json/list") as response:
        targets = [target for target in json.load(response) if target["type"] == "page"]
    async with websockets.connect(targets[0]["webSocketDebuggerUrl"], max_size=None) as socket:
        devtools = DevTools(socket)
        await devtools.call("Page.enable")
        await devtools.call(
            "Emulation.setDeviceMetricsOverride",
            width=args.width,
            height=args.height,
            deviceScaleFactor=1,
            mobile=False,
        )
        for page in args.pages:
            path_part, marker = PAGES[page]
            url = f"{app_url}/{path_part}" + (f"?{queries[page]}" if queries.get(page) else "")
            seconds = await capture(devtools, url, marker, out / f"{page}.png", args.timeout, args.settle)
            print(f"{page:9s} ready in {seconds:5.2f} s  -> {out / (page + '.png')}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8599, help="port for the Streamlit server")
    parser.add_argument("--debug-port", type=int, default=9333, help="Chromium's remote-debugging port")
    parser.add_argument("--out", type=Path, default=PROJECT / "screenshots")
    parser.add_argument("--pages", nargs="+", default=list(PAGES), choices=list(PAGES))
    parser.add_argument("--run", help="run id to open on the run pages (default: the newest finished run)")
    parser.add_argument("--bit", type=int, help="bit to open on the Bits page")
    parser.add_argument("--concept", default="seizure", help="search text for the Concepts page")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=3200)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for one page")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds to let charts draw before the shot")
    parser.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser"))
    args = parser.parse_args()
    if not args.chromium:
        parser.error("no chromium found; install it (apt-get install -y chromium) or pass --chromium")
    args.out.mkdir(parents=True, exist_ok=True)
    run = f"run={args.run}&" if args.run else ""
    queries = {
        "bits": run + (f"bit={args.bit}" if args.bit is not None else ""),
        "concepts": run + f"concept={args.concept}",
        "compare": "",
    }
    app_url = f"http://127.0.0.1:{args.port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true"]
        + ["--server.port", str(args.port), "--browser.gatherUsageStats", "false"],
        cwd=PROJECT,
        env=os.environ.copy(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    with tempfile.TemporaryDirectory() as profile:
        browser = subprocess.Popen(
            [args.chromium, *CHROMIUM_FLAGS, f"--remote-debugging-port={args.debug_port}", f"--user-data-dir={profile}"]
            + [f"--window-size={args.width},{args.height}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_http(f"{app_url}/_stcore/health", 60)
            wait_for_http(f"http://127.0.0.1:{args.debug_port}/json/version", 30)
            asyncio.run(drive(args.debug_port, app_url, args.out, queries, args))
        finally:
            for process in (browser, server):
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
