"""Vercel for the tests: `vercel build` on a clean copy, offline and without an account, and the built function run as Vercel runs it.

The build is the pinned CLI's (.tools/), with the Flask preset that `vercel link` writes into
`.vercel/project.json`, Python 3.12 from this machine's pyenv and uv from the venv (PyPI is the only
network it uses). The function runs from its own output directory (`.vercel/output/functions/*.func`:
the app's files and `_vendor/`, the packages it bundled), started as Vercel's runtime starts it: the
handler module its `.vc-config.json` names, imported by Python 3.12 with that file's environment and
a Unix socket in ``VERCEL_IPC_PATH``. vercel_runtime then serves HTTP on a loopback port it announces
there (``server-started``), takes each request with Vercel's internal headers, and reports ``end``.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import requests

from tests.containers import copy_context
from tests.servers import ROOT, VENV_BIN, clean_environ

VERCEL = ROOT / ".tools" / "node_modules" / ".bin" / "vercel"
# What `vercel link` writes for a project with the Flask framework preset (ids made up: nothing is deployed).
PROJECT = {
    "projectId": "prj_0000000000000000000000000000",
    "orgId": "team_000000000000000000000000",
    "settings": {
        "createdAt": 1796000000000,
        "framework": "flask",
        "devCommand": None,
        "installCommand": None,
        "buildCommand": None,
        "outputDirectory": None,
        "rootDirectory": None,
        "directoryListing": False,
        "nodeVersion": "22.x",
    },
}


def python312() -> Path:
    """Return a Python 3.12 interpreter (Vercel's default runtime): pyenv's on this machine, else one on PATH."""
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    pyenv = sorted(glob.glob(str(pyenv_root / "versions" / "3.12*" / "bin" / "python3.12")), reverse=True)
    for candidate in [*pyenv, "/usr/bin/python3.12"]:
        if Path(candidate).is_file():
            return Path(candidate)
    raise RuntimeError("Python 3.12 is not installed (pyenv install 3.12, or Debian's python3.12): Vercel's Python runtime is 3.12")


def vercel_build(destination: Path, bytecode: bool = False) -> tuple[Path, subprocess.CompletedProcess]:
    """Copy the tree as a clone has it to ``destination``, run `vercel build` there; return the deployable function and the run.

    The function is assembled as a deploy uploads it: the files of the `.func` directory, and those
    its `.vc-config.json` maps in (`filePathMap`: the app's files, `_vendor/` from the build's venv).

    ``bytecode``: with VERCEL_PYTHON_COMPILEALL=1, the project setting that makes the builder ship .pyc files.
    """
    if not VERCEL.exists():
        raise RuntimeError(f"{VERCEL} is missing: run `make test` (it installs the pinned CLI)")
    copy_context(destination)
    (destination / ".vercel").mkdir()
    (destination / ".vercel" / "project.json").write_text(json.dumps(PROJECT))
    env = {
        **clean_environ(),
        "PATH": f"{python312().parent}:{VENV_BIN}:{os.environ['PATH']}",  # the builder looks for python3.12 and uv on PATH
        "VERCEL_TELEMETRY_DISABLED": "1",
        "NO_UPDATE_NOTIFIER": "1",
        "CI": "1",
    }
    if bytecode:
        env["VERCEL_PYTHON_COMPILEALL"] = "1"
    done = subprocess.run([str(VERCEL), "build", "--yes"], cwd=destination, env=env, capture_output=True, text=True, timeout=600)
    functions = sorted((destination / ".vercel" / "output" / "functions").glob("*.func")) if done.returncode == 0 else []
    if not functions:
        return destination, done
    deployed = destination.parent / f"{destination.name}-task"  # /var/task, as the function's instances see it
    shutil.copytree(functions[0], deployed)
    for name, source in json.loads((functions[0] / ".vc-config.json").read_text()).get("filePathMap", {}).items():
        target = deployed / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(destination / source, target)
    return deployed, done


class VercelFunction:
    """One instance of a built function, started as Vercel's runtime starts it, answering HTTP on loopback."""

    def __init__(self, function_dir: Path, env: dict[str, str], workdir: Path, name: str = "instance"):
        """Prepare; ``start`` runs it."""
        self.function_dir = function_dir
        self.config = json.loads((function_dir / ".vc-config.json").read_text())
        self.ipc_path = workdir / f"{name}-{uuid.uuid4().hex[:8]}.sock"
        self.env = {**clean_environ(), **self.config.get("environment", {}), **env, "VERCEL": "1", "VERCEL_IPC_PATH": str(self.ipc_path)}
        self.log_path = workdir / f"{name}.log"
        self.messages: list[dict] = []
        self.port: int | None = None
        self.process: subprocess.Popen | None = None
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(self.ipc_path))
        self._listener.listen(1)
        self._started = threading.Event()

    def start(self, timeout: float = 30) -> VercelFunction:
        """Start the instance (its cold start) and wait for its ``server-started`` message; raise with its last words if it dies."""
        module = self.config["handler"].rsplit(".", 1)[0]  # vc__handler__python.vc_handler: the module is imported
        if self.config["runtime"] != "python3.12":
            raise RuntimeError(f"the build chose {self.config['runtime']}, not python3.12")
        log = open(self.log_path, "ab")
        command = [str(python312()), "-c", f"import {module}"]
        self.process = subprocess.Popen(command, cwd=self.function_dir, env=self.env, stdout=log, stderr=log, start_new_session=True)
        threading.Thread(target=self._read_ipc, daemon=True).start()
        deadline = time.time() + timeout
        while not self._started.wait(0.1):
            if self.process.poll() is not None or time.time() > deadline:
                errors = [m["payload"]["message"] for m in self.messages if m.get("type") == "unrecoverable-error"]
                raise RuntimeError(f"the function did not start: {errors or self.log_path.read_text()[-2000:]}")
        return self

    def request(self, method: str, path: str, source_ip: str, headers: dict | None = None, **kwargs) -> requests.Response:
        """Send one invocation as Vercel's edge does: its internal ids, and X-Forwarded-For set to the client's address."""
        sent = {
            "x-vercel-internal-invocation-id": uuid.uuid4().hex,
            "x-vercel-internal-request-id": "1",
            "x-vercel-internal-span-id": "0",
            "x-vercel-internal-trace-id": "0",
            "x-forwarded-for": source_ip,
            "x-real-ip": source_ip,
            "x-forwarded-proto": "https",
            "host": "ice-servers.vercel.app",
            **(headers or {}),
        }
        return requests.request(method, f"http://127.0.0.1:{self.port}{path}", headers=sent, timeout=30, **kwargs)

    def freeze(self) -> None:
        """Freeze the instance between invocations (SIGSTOP), as Vercel does once the response and any waitUntil have ended."""
        os.killpg(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        """Thaw it (SIGCONT)."""
        os.killpg(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        """Kill the instance (thawed first)."""
        if self.process and self.process.poll() is None:
            self.thaw()
            self.process.kill()
            self.process.wait(10)
        self._listener.close()

    def _read_ipc(self) -> None:
        """Keep the runtime's messages (NUL-separated JSON); note the port of ``server-started``."""
        connection, _ = self._listener.accept()
        buffer = b""
        with connection:
            while chunk := connection.recv(65536):
                buffer += chunk
                *complete, buffer = buffer.split(b"\0")
                for raw in complete:
                    message = json.loads(raw)
                    self.messages.append(message)
                    if message.get("type") == "server-started":
                        self.port = message["payload"]["httpPort"]
                        self._started.set()


def remove_build(destination: Path) -> None:
    """Remove a build's copy (its venv is large)."""
    shutil.rmtree(destination, ignore_errors=True)
