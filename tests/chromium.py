"""Headless Chromium driven over the DevTools protocol (``--remote-debugging-pipe``: no port,
no extra Python package): load a page, collect console errors, exceptions and network requests,
measure its images and take a full-page screenshot."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """The Chromium executable: ``$CHROMIUM``, else the first of :data:`CANDIDATES` on PATH."""
    env = os.environ.get("CHROMIUM")
    if env and shutil.which(env):
        return shutil.which(env)
    return next((shutil.which(c) for c in CANDIDATES if shutil.which(c)), None)


@dataclass
class PageLoad:
    """What loading a page showed."""

    #: console messages of level error/assert, uncaught exceptions, failed loads, log errors
    errors: list[str] = field(default_factory=list)
    #: requests for anything but the page itself and data: URLs
    requests: list[str] = field(default_factory=list)
    #: per <img>: complete, naturalWidth/Height, and its box in page coordinates
    images: list[dict[str, Any]] = field(default_factory=list)
    #: the full-page screenshot (PNG) and the page's size in CSS pixels
    screenshot: bytes = b""
    width: int = 0
    height: int = 0
    #: the values of the expressions given to :func:`load_page`, in order
    values: list[Any] = field(default_factory=list)


class _Pipe:
    """The DevTools protocol over Chromium's fds 3 (commands in) and 4 (replies out)."""

    def __init__(self, exe: str, profile: str) -> None:
        import fcntl

        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        # Chromium reads commands from fd 3 and writes replies to fd 4: the child's ends are
        # moved above 10 first (so that putting them on 3 and 4 overwrites nothing of theirs)
        r = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 10)
        w = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 10)
        os.close(to_chrome_r)
        os.close(from_chrome_w)

        def fds() -> None:  # in the child, before exec (dup2 makes 3 and 4 inheritable)
            os.dup2(r, 3)
            os.dup2(w, 4)

        flags = [
            "--headless=new",
            "--remote-debugging-pipe",
            "--no-sandbox",  # CI containers run as root
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            "about:blank",
        ]
        self.proc = subprocess.Popen(
            [exe, *flags],
            preexec_fn=fds,  # the test's process starts no thread meanwhile
            close_fds=False,  # else fds 3 and 4 would be closed after fds() ran
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(r)
        os.close(w)
        self._buffer = b""
        self._id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        """Send a command and wait for its reply (events meanwhile go to :attr:`events`)."""
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_chrome, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._read(60)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        for e in self.events:
            if e.get("method") == method:
                return e
        while time.monotonic() < deadline:
            e = self._read(deadline - time.monotonic())
            self.events.append(e)
            if e.get("method") == method:
                return e
        raise TimeoutError(f"no {method} within {timeout} s")

    def _read(self, timeout: float) -> dict:
        import select

        deadline = time.monotonic() + timeout
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_chrome], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer")
            chunk = os.read(self._from_chrome, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self._buffer += chunk
        raw, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(raw)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.send("Browser.close")
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_chrome)
        os.close(self._from_chrome)


_IMAGES = """JSON.stringify({
  width: document.documentElement.scrollWidth,
  height: document.documentElement.scrollHeight,
  images: Array.from(document.images).map(function (i) {
    var r = i.getBoundingClientRect();
    return {complete: i.complete, w: i.naturalWidth, h: i.naturalHeight, alt: i.alt,
            x: r.left + window.scrollX, y: r.top + window.scrollY, width: r.width,
            height: r.height};
  })
})"""


def load_page(
    path: Path, width: int = 1280, timeout: float = 60, evaluate: tuple[str, ...] = ()
) -> PageLoad:
    """Open ``path`` in headless Chromium at ``width`` CSS pixels, take a full-page screenshot,
    then evaluate each of ``evaluate`` (JavaScript expressions) in the page, and report what
    happened."""
    exe = find_chromium()
    if exe is None:
        raise FileNotFoundError("no chromium executable")
    url = path.resolve().as_uri()
    out = PageLoad()
    with tempfile.TemporaryDirectory(prefix="robench-chromium-") as profile:
        pipe = _Pipe(exe, profile)
        try:
            target = pipe.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = pipe.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
                "sessionId"
            ]
            for domain in ("Runtime", "Log", "Page", "Network"):
                pipe.send(f"{domain}.enable", session=session)
            metrics = {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False}
            pipe.send("Emulation.setDeviceMetricsOverride", metrics, session=session)
            pipe.events.clear()
            pipe.send("Page.navigate", {"url": url}, session=session)
            pipe.wait_event("Page.loadEventFired", timeout)
            got = pipe.send(
                "Runtime.evaluate", {"expression": _IMAGES, "returnByValue": True}, session=session
            )
            page = json.loads(got["result"]["value"])
            out.width, out.height, out.images = page["width"], page["height"], page["images"]
            shot = pipe.send(
                "Page.captureScreenshot",
                {
                    "format": "png",
                    "captureBeyondViewport": True,
                    "clip": {"x": 0, "y": 0, "width": out.width, "height": out.height, "scale": 1},
                },
                session=session,
            )
            out.screenshot = base64.b64decode(shot["data"])
            for expression in evaluate:
                got = pipe.send(
                    "Runtime.evaluate",
                    {"expression": expression, "returnByValue": True},
                    session=session,
                )
                out.values.append(got["result"].get("value"))
        finally:
            pipe.close()
    for e in pipe.events:
        method, params = e.get("method", ""), e.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
            out.errors.append(f"console.{params['type']}: {text}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            text = details.get("exception", {}).get("description", details)
            out.errors.append(f"exception: {text}")
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            out.errors.append(f"log: {params['entry'].get('text', '')}")
        elif method == "Network.loadingFailed":
            out.errors.append(f"load failed: {params.get('errorText', '')}")
        elif method == "Network.requestWillBeSent":
            req = params.get("request", {}).get("url", "")
            if req != url and not req.startswith("data:"):
                out.requests.append(req)
    return out
