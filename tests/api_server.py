"""A real HTTP server for tests: the API's FastAPI app under uvicorn on a free loopback port
(the same app object the Ray Serve deployment ingresses)."""

from __future__ import annotations

import contextlib
import threading
import time


@contextlib.contextmanager
def serving(app):
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def ray_app_serve(home, timeout_s: float = 180, extra_args: tuple = ()):
    """``ray-app serve`` in a subprocess (local Ray, Serve, the local driver) on a free port;
    yields (base URL, the admin key its first start printed, the process)."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    port = free_port()
    env = {**os.environ, "RAY_APP_HOME": str(home), "USER": "tester",
           "RAY_AUTH_MODE": "disabled", "RAY_APP_WAIT_S": "1", "PYTHONUNBUFFERED": "1"}
    Path(home).parent.mkdir(parents=True, exist_ok=True)
    log = open(Path(home).parent / "serve.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "ray_app", "serve", "--port", str(port),
                             *extra_args],
                            stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    deadline = time.monotonic() + timeout_s
    key = None
    try:
        while True:
            text = Path(log.name).read_text()
            key = next((ln.strip() for ln in text.splitlines() if ln.startswith("rak_")), key)
            if "ray-app API on" in text and key:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray-app serve did not start (rc {proc.poll()}):\n"
                                   + text[-3000:])
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}", key, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()
