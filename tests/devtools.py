"""A headless Chromium driven over the DevTools protocol, for the tests of the offline explorer pages."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


class DevTools:
    """A headless Chromium and one page in it, spoken to over the DevTools protocol's websocket."""

    def __init__(self, chromium: str, profile: Path):
        websocket = pytest.importorskip(
            "websocket", reason="websocket-client is in the dev extra: pip install -e .[dev]"
        )
        self.process = subprocess.Popen(
            [
                chromium,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
                "--remote-debugging-port=0",
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and len(port_file.read_text().split()) == 2):
            assert time.monotonic() < deadline and self.process.poll() is None, "chromium did not start"
            time.sleep(0.1)
        port, browser = port_file.read_text().split()
        self.socket = websocket.create_connection(f"ws://127.0.0.1:{port}{browser}", timeout=30)
        self.calls, self.events = 0, []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Network", "Page", "Runtime"):
            self.call(f"{domain}.enable", self.session)
        offline = {"offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1}
        self.call("Network.emulateNetworkConditions", self.session, **offline)

    def call(self, method: str, session: str | None = None, **params) -> dict:
        self.calls += 1
        message = {"id": self.calls, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        self.socket.send(json.dumps(message))
        while True:
            reply = json.loads(self.socket.recv())
            if reply.get("id") == self.calls:
                assert "error" not in reply, (method, reply["error"])
                return reply["result"]
            self.events.append(reply)

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", self.session, expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def open(self, path: Path) -> None:
        self.call("Page.navigate", self.session, url=path.as_uri())
        deadline = time.monotonic() + 30
        while self.evaluate("document.body && document.body.dataset.ready") != "1":
            assert time.monotonic() < deadline, "the explorer never finished loading its frames"
            time.sleep(0.05)

    def canvas(self, element: str = "view") -> np.ndarray:
        url = self.evaluate(f"document.getElementById('{element}').toDataURL('image/png')")
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")).astype(int)

    def screenshot(self, width: int = 1280, height: int = 900) -> np.ndarray:
        """What a person sees: the page rendered in a ``width x height`` window at one device pixel per CSS pixel."""
        metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
        self.call("Emulation.setDeviceMetricsOverride", self.session, **metrics)
        data = self.call("Page.captureScreenshot", self.session, format="png")["data"]
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))

    def requests(self) -> list[str]:
        """Every URL the page asked for, but the data URIs inlined in it."""
        sent = [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]
        return [url for url in sent if not url.startswith("data:")]

    def errors(self) -> list[dict]:
        return [e["params"] for e in self.events if e.get("method") == "Runtime.exceptionThrown"]

    def close(self) -> None:
        self.socket.close()
        self.process.terminate()
        self.process.wait(timeout=30)
