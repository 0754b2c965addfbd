"""A real headless Chromium driven over the Chrome DevTools Protocol (websocket-client, no extra driver).

Used by the browser tier (``make test-ui``) and by benchmarks/bench_report_in_mlflow_ui.py: open a page,
wait until every image of a report has loaded in whichever frame holds it (MLflow shows an HTML artefact in
a sandboxed iframe, which Chromium may put in its own process), and take a screenshot.
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import websocket

# Every <img> of the document: its source (cut), whether it loaded and its decoded width.
IMAGES_JS = """JSON.stringify(Array.from(document.images).map(i => ({
  src: i.currentSrc.slice(0, 60), complete: i.complete, width: i.naturalWidth})))"""


def chromium_binary() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@dataclass
class FrameImages:
    url: str
    images: list[dict[str, Any]]

    @property
    def all_loaded(self) -> bool:
        return bool(self.images) and all(i["complete"] and i["width"] > 0 for i in self.images)


class Browser:
    """One headless Chromium with one page; use as a context manager (the process is always stopped)."""

    def __init__(self, width: int = 1400, height: int = 1800) -> None:
        binary = chromium_binary()
        if binary is None:
            raise RuntimeError("chromium: not installed (scripts/ui/install-chromium.sh)")
        self._profile = Path(tempfile.mkdtemp(prefix="clinrisk-chromium-"))
        self._proc = subprocess.Popen(
            [
                binary,
                "--headless=new",
                "--no-sandbox",  # CI runs as root, where Chromium's own sandbox cannot start
                "--disable-gpu",
                "--no-first-run",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                f"--user-data-dir={self._profile}",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._next_id = 0
        try:
            port = self._wait_port()
            version = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/version").read())
            self._ws = websocket.create_connection(version["webSocketDebuggerUrl"], timeout=60)
            target = self.call("Target.createTarget", url="about:blank")["targetId"]
            self.page = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            self.call("Page.enable", session=self.page)
            self.call(
                "Emulation.setDeviceMetricsOverride",
                session=self.page,
                width=width,
                height=height,
                deviceScaleFactor=1,
                mobile=False,
            )
            # Out-of-process iframes (sandboxed srcdoc frames can be) become sessions of their own.
            self.call(
                "Target.setAutoAttach",
                session=self.page,
                autoAttach=True,
                waitForDebuggerOnStart=False,
                flatten=True,
            )
        except BaseException:
            self.close()
            raise

    def _wait_port(self, timeout_s: float = 60.0) -> int:
        marker = self._profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {self._proc.returncode} before listening")
            if marker.is_file() and marker.read_text().strip():
                return int(marker.read_text().split()[0])
            time.sleep(0.1)
        raise RuntimeError("chromium: no DevTools port after 60 s")

    def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        """Send one CDP command and return its result (events received meanwhile are dropped)."""
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session is not None:
            msg["sessionId"] = session
        self._ws.send(json.dumps(msg))
        while True:
            reply = json.loads(self._ws.recv())
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return dict(reply.get("result", {}))

    def navigate(self, url: str) -> None:
        self.call("Page.navigate", session=self.page, url=url)

    def _frame_sessions(self) -> list[str]:
        """The page's session plus one session per out-of-process iframe."""
        sessions = [self.page]
        for info in self.call("Target.getTargets")["targetInfos"]:
            if info["type"] == "iframe":
                sessions.append(
                    self.call("Target.attachToTarget", targetId=info["targetId"], flatten=True)["sessionId"]
                )
        return sessions

    def frame_images(self) -> list[FrameImages]:
        """The images of every frame (main document, in-process iframes, out-of-process iframes)."""
        out: list[FrameImages] = []
        for session in self._frame_sessions():
            tree = self.call("Page.getFrameTree", session=session)["frameTree"]
            stack = [tree]
            while stack:
                node = stack.pop()
                stack.extend(node.get("childFrames", []))
                frame = node["frame"]
                try:
                    ctx = self.call("Page.createIsolatedWorld", session=session, frameId=frame["id"])
                except RuntimeError:
                    continue  # a frame of another process: its own session covers it
                value = self.call(
                    "Runtime.evaluate",
                    session=session,
                    expression=IMAGES_JS,
                    contextId=ctx["executionContextId"],
                    returnByValue=True,
                )
                images = json.loads(value["result"].get("value") or "[]")
                out.append(FrameImages(url=frame.get("url", ""), images=images))
        return out

    def wait_for_report_images(self, min_images: int, timeout_s: float = 240.0) -> FrameImages:
        """Poll until one frame holds at least ``min_images`` images, all loaded; that frame's images.
        On timeout, AssertionError listing what every frame held."""
        deadline = time.monotonic() + timeout_s
        frames: list[FrameImages] = []
        while time.monotonic() < deadline:
            frames = self.frame_images()
            for f in frames:
                if len(f.images) >= min_images and f.all_loaded:
                    return f
            time.sleep(0.5)
        raise AssertionError(f"no frame with {min_images} loaded images after {timeout_s} s: {frames}")

    def text(self) -> str:
        value = self.call(
            "Runtime.evaluate", session=self.page, expression="document.body.innerText", returnByValue=True
        )
        return str(value["result"].get("value") or "")

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", session=self.page, format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        ws = getattr(self, "_ws", None)
        if ws is not None:
            with contextlib.suppress(Exception):  # the browser is stopped below either way
                ws.close()
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
