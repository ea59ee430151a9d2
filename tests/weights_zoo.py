"""A loopback model zoo for tests of the weights registry (tests/test_weights.py, tests/test_api.py,
tests/test_own_data.py): files served under /zoo/<name> by an http.server thread on 127.0.0.1, with
fault injection, and the user-registry rows that point at them through CTXSEG_WEIGHTS_MIRROR.

    with Zoo.running() as zoo:
        row = zoo.serve("demo.safetensors", data, recipe="demo")
        write_registry(tmp / "lab.toml", {"my-demo": row})
        env = zoo.env(tmp / "home", tmp / "lab.toml")   # CTXSEG_HOME, _MIRROR, _REGISTRY, fast retries
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class Zoo:
    """Files served under /zoo/<name>; per-file faults: `drops[name]` = byte counts after which the
    next requests close the connection; `ignore_range` names files served whole (200) always;
    `log` records every request (name, range, bytes sent, status)."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.drops: dict[str, list[int]] = {}
        self.ignore_range: set[str] = set()
        self.delay = 0.0
        self.log: list[dict] = []
        self.lock = threading.Lock()
        self.url = ""

    def requests(self, name: str) -> list[dict]:
        return [r for r in self.log if r["name"] == name]

    @classmethod
    @contextlib.contextmanager
    def running(cls) -> Iterator[Zoo]:
        """A zoo served on a free loopback port for the duration of the block."""
        zoo = cls()
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(zoo))
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        zoo.url = f"http://127.0.0.1:{server.server_address[1]}"
        try:
            yield zoo
        finally:
            server.shutdown()
            server.server_close()

    @property
    def mirror(self) -> str:
        """The CTXSEG_WEIGHTS_MIRROR value that sends every registry URL to this zoo."""
        return f"{self.url}/zoo"

    def serve(self, name: str, data: bytes, *, kind="released", layout="ctxseg", recipe="demo", prefix=False, **kw):
        """Put `data` in the zoo as `name` and return its registry row (published at
        https://example.org/zoo/<name>; `prefix`: only the first 8 hex digits of its sha256)."""
        self.files[name] = data
        digest = hashlib.sha256(data).hexdigest()
        row = {"kind": kind, "url": f"https://example.org/zoo/{name}", "sha256": digest[:8] if prefix else digest}
        row.update(layout=layout, size=len(data), source="test", **kw)
        if recipe is not None:
            row["recipe" if kind == "released" else "recipes"] = recipe if kind == "released" else [recipe]
        return row

    def env(self, home: Path, registry: Path | None = None, *, seed_layout: bool = True) -> dict[str, str]:
        """Environment variables for a process that uses this zoo: its own cache `home`, fast retries.
        `seed_layout`: `home` starts with the suite's measured memory-layout verdict (conftest's shared
        CTXSEG_HOME), so a command run there does not time convolutions again (ctxseg.engine.layout)."""
        if seed_layout:
            shared = Path(os.environ.get("CTXSEG_HOME", "")) / "layout.json"
            if shared.is_file() and not (home / "layout.json").exists():
                home.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(shared, home / "layout.json")
        out = {
            "CTXSEG_HOME": str(home),
            "CTXSEG_WEIGHTS_MIRROR": self.mirror,
            "CTXSEG_WEIGHTS_BACKOFF": "0",
            "CTXSEG_WEIGHTS_RETRIES": "2",
            "CTXSEG_WEIGHTS_TIMEOUT": "10",
        }
        if registry is not None:
            out["CTXSEG_WEIGHTS_REGISTRY"] = str(registry)
        return out


def write_registry(path: Path, rows: dict[str, dict]) -> Path:
    """A user registry file (the format of recipes/provenance/weights.toml) with `rows`; values are
    written as JSON, which TOML reads for strings, numbers, booleans and lists; a dict value becomes
    an inline table."""

    def value(v):
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        return json.dumps(v)

    lines = []
    for name, row in rows.items():
        lines.append(f"[weights.{name}]")
        lines += [f"{k} = {value(v)}" for k, v in row.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def _handler(zoo: Zoo):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def do_GET(self):  # noqa: N802 - http.server's name
            name = self.path.rsplit("/", 1)[-1]  # the mirror prefix and the published path are kept
            rng = self.headers.get("Range")
            entry = {"name": name, "range": rng, "sent": 0, "status": 404}
            with zoo.lock:
                zoo.log.append(entry)
                drop = zoo.drops.get(name, []).pop(0) if zoo.drops.get(name) else None
            data = zoo.files.get(name)
            if data is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start = 0
            if rng and name not in zoo.ignore_range:
                start = int(rng.removeprefix("bytes=").split("-")[0])
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            entry["status"] = 206 if start else 200
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if drop is not None:
                body = body[:drop]
                self.close_connection = True
            step = 1 << 16
            for i in range(0, len(body), step):
                self.wfile.write(body[i : i + step])
                entry["sent"] += len(body[i : i + step])
                if zoo.delay:
                    time.sleep(zoo.delay)
            self.wfile.flush()

    return Handler
