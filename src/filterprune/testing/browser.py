"""Open a page in headless Chromium and report what a reader would see.

Talks the DevTools protocol over Chromium's ``--remote-debugging-pipe`` (JSON messages
separated by NUL bytes on file descriptors 3 and 4), so it needs no Python package
beyond the standard library: only the ``chromium`` binary (Debian package ``chromium``).
Used by the report's tests and by ``scripts/report_screenshot.py``.

Example:
    >>> page = open_page("runs/r18/report.html", screenshot="shot.png")  # doctest: +SKIP
    >>> page.errors, page.images_loaded  # doctest: +SKIP
    ([], True)
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["PageResult", "find_chromium", "open_page"]

_CHECKS = """JSON.stringify({
  title: document.title,
  text: document.body ? document.body.innerText : "",
  height: document.documentElement.scrollHeight,
  images: Array.from(document.images).map(i => ({
    alt: i.alt, complete: i.complete, width: i.naturalWidth, height: i.naturalHeight})),
})"""


@dataclass
class PageResult:
    """What the page showed.

    Attributes:
        title: ``document.title``.
        text: The visible text of the body.
        height: The page's full height in CSS pixels.
        images: Per ``<img>``: alt text, whether it finished loading, its natural size.
        errors: Console errors, uncaught exceptions and failed loads, as text.
    """

    title: str
    text: str
    height: int
    images: list[dict[str, Any]]
    errors: list[str] = field(default_factory=list)

    @property
    def images_loaded(self) -> bool:
        return all(i["complete"] and i["width"] > 0 for i in self.images)


def find_chromium() -> str | None:
    """The Chromium binary on PATH, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


class _Pipe:
    """One DevTools connection over a pair of pipes."""

    def __init__(self, write_fd: int, read_fd: int) -> None:
        self.write_fd, self.read_fd = write_fd, read_fd
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, params: dict[str, Any] | None = None,
             session: str | None = None, timeout: float = 30.0) -> dict[str, Any]:  # fmt: skip
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.write_fd, json.dumps(message).encode() + b"\0")
        while True:
            reply = self.read(timeout)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"DevTools {method} failed: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def read(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.read_fd], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer in time.")
            chunk = os.read(self.read_fd, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe.")
            self.buffer += chunk
        message, _, self.buffer = self.buffer.partition(b"\0")
        return json.loads(message)

    def wait_for(self, method: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            self.events.append(self.read(max(0.01, deadline - time.monotonic())))


def _errors(events: list[dict[str, Any]]) -> list[str]:
    out = []
    for e in events:
        p = e.get("params", {})
        if e.get("method") == "Runtime.consoleAPICalled" and p.get("type") in ("error",
                                                                               "assert"):
            out.append("console: " + " ".join(str(a.get("value", a.get("description", "")))
                                              for a in p.get("args", [])))  # fmt: skip
        elif e.get("method") == "Runtime.exceptionThrown":
            out.append("exception: " + p.get("exceptionDetails", {}).get("text", ""))
        elif e.get("method") == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            entry = p["entry"]
            out.append(f"log: {entry.get('text', '')} {entry.get('url', '')}".strip())
    return out


def _high(fd: int) -> int:
    """``fd`` moved to a number >= 10, so the shell's ``3<&N 4>&M`` cannot clobber it."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return moved


def _launch(binary: str, profile: str) -> tuple[subprocess.Popen, _Pipe]:
    to_chrome_r, to_chrome_w = map(_high, os.pipe())
    from_chrome_r, from_chrome_w = map(_high, os.pipe())
    flags = ["--headless", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
             "--disable-extensions", "--hide-scrollbars", "--remote-debugging-pipe",
             f"--user-data-dir={profile}", "--window-size=1100,900", "about:blank"]  # fmt: skip
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        flags.insert(0, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
    # bash (dash reads one-digit fds only) puts our pipe ends on fds 3 and 4 for Chromium
    script = f'exec "$0" "$@" 3<&{to_chrome_r} 4>&{from_chrome_w}'
    with open(Path(profile) / "chromium.log", "wb") as log:
        proc = subprocess.Popen(["/bin/bash", "-c", script, binary, *flags],
                                pass_fds=(to_chrome_r, from_chrome_w), stdin=subprocess.DEVNULL,
                                stdout=log, stderr=log)  # fmt: skip
    os.close(to_chrome_r)
    os.close(from_chrome_w)
    return proc, _Pipe(to_chrome_w, from_chrome_r)


def open_page(path: str | os.PathLike, *, screenshot: str | os.PathLike | None = None,
              width: int = 1100, max_height: int | None = None, timeout: float = 60.0,
              binary: str | None = None) -> PageResult:  # fmt: skip
    """Load ``path`` in headless Chromium; collect its text, images and errors.

    Args:
        screenshot: Also save a PNG of the page here.
        width: Viewport width in CSS pixels.
        max_height: Cut the screenshot at this height (default: the whole page).

    Raises:
        FileNotFoundError: Chromium is not installed.
    """
    binary = binary or find_chromium()
    if binary is None:
        raise FileNotFoundError("Chromium is not installed: apt-get install -y chromium.")
    url = Path(path).resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="filterprune-chromium-") as profile:
        proc, pipe = _launch(binary, profile)
        try:
            target = pipe.send("Target.createTarget", {"url": "about:blank"}, timeout=timeout)
            session = pipe.send("Target.attachToTarget", {"targetId": target["targetId"],
                                                          "flatten": True})["sessionId"]
            for domain in ("Runtime", "Log", "Page"):
                pipe.send(f"{domain}.enable", session=session)
            pipe.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": 900,
                      "deviceScaleFactor": 1, "mobile": False}, session=session)  # fmt: skip
            pipe.send("Page.navigate", {"url": url}, session=session)
            pipe.wait_for("Page.loadEventFired", timeout)
            raw = pipe.send("Runtime.evaluate", {"expression": _CHECKS, "returnByValue": True},
                            session=session)["result"]["value"]  # fmt: skip
            result = PageResult(**json.loads(raw))
            if screenshot is not None:
                height = min(result.height, max_height or result.height)
                _screenshot(pipe, session, height, width, screenshot)
            time.sleep(0.2)  # late console messages
            pipe.events += _drain(pipe)
            result.errors = _errors(pipe.events)
            pipe.send("Browser.close")
        except (RuntimeError, TimeoutError) as err:
            log = (Path(profile) / "chromium.log").read_text(errors="replace").splitlines()
            raise RuntimeError(f"{err} Chromium's last output:\n" + "\n".join(log[-15:])) from None
        finally:
            proc.wait(timeout=10) if proc.poll() is not None else _stop(proc)
            os.close(pipe.write_fd)
            os.close(pipe.read_fd)
    return result


def _drain(pipe: _Pipe) -> list[dict[str, Any]]:
    out = []
    while True:
        try:
            out.append(pipe.read(0.05))
        except TimeoutError:
            return out


def _screenshot(pipe: _Pipe, session: str, height: int, width: int, path: Any) -> None:
    pipe.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": int(height),
              "deviceScaleFactor": 1, "mobile": False}, session=session)  # fmt: skip
    clip = {"x": 0, "y": 0, "width": width, "height": int(height), "scale": 1}
    shot = pipe.send("Page.captureScreenshot", {"format": "png", "clip": clip,
                     "captureBeyondViewport": True}, session=session)  # fmt: skip
    Path(path).write_bytes(base64.b64decode(shot["data"]))


def _stop(proc: subprocess.Popen) -> None:
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
