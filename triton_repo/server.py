"""Start the real `tritonserver` binary shipped in the nvidia-pytriton wheel, with the environment it needs.

    with TritonServer("model_repository", grpc_port=8001) as server:
        print(server.grpc_url, server.loaded_models())

What the binary needs on this kind of machine (checked; see DESIGN.md): a backend directory holding the python
backend with the stub for this interpreter next to `libtriton_python.so`; the virtualenv's `bin` first on PATH
(with PYTHONPATH instead, tensors arrive as zeros); LD_LIBRARY_PATH with libpython's directory and the wheel's
bundled libraries; explicit bind addresses (it listens on all interfaces otherwise).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from zoo.atomic import fsync_tree, make_temp_dir

PYTHON_TAG = f"{sys.version_info.major}.{sys.version_info.minor}"
_ERROR_LINE = re.compile(r"^E\d{4} |failed to load|UNAVAILABLE|error:|Invalid argument", re.IGNORECASE)


class TritonServerError(RuntimeError):
    """The server could not be started or became unhealthy; the message carries its own log lines."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def triton_home() -> Path:
    """The wheel's `pytriton/tritonserver` directory (binary, backends, stubs)."""
    found = importlib.util.find_spec("pytriton")
    if found is None or not found.submodule_search_locations:
        raise TritonServerError("nvidia-pytriton is not installed; run `uv sync` (it ships the tritonserver binary)")
    home = Path(list(found.submodule_search_locations)[0]) / "tritonserver"
    if not (home / "bin" / "tritonserver").is_file():
        raise TritonServerError(f"{home}/bin/tritonserver is missing; reinstall nvidia-pytriton")
    return home


def cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "breast-fusion-zoo" / "triton-backends"


def prepare_backend_dir(home: Path | None = None, root: Path | None = None) -> Path:
    """A backend directory with the python backend and this interpreter's stub; built once, reused after."""
    home = home or triton_home()
    root = root or cache_root()
    sources = [home / "backends" / "python" / "libtriton_python.so",
               home / "backends" / "python" / "triton_python_backend_utils.py",
               home / "python_backend_stubs" / PYTHON_TAG / "triton_python_backend_stub"]
    for src in sources:
        if not src.is_file():
            raise TritonServerError(f"{src} is missing from nvidia-pytriton (python {PYTHON_TAG} stub needed)")
    key = hashlib.sha256(json.dumps([[str(s), s.stat().st_size, s.stat().st_mtime_ns] for s in sources]).encode())
    target = root / key.hexdigest()[:16]
    if (target / "python" / "triton_python_backend_stub").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = make_temp_dir(root, target.name)  # 0777 & ~umask once moved into place, not mkdtemp's 0700
    (staging / "python").mkdir()
    for src in sources:
        shutil.copy2(src, staging / "python" / src.name)
    fsync_tree(staging)  # outside the try: a failed sync is an error, not another process's finished copy
    try:
        os.replace(staging, target)
    except OSError:  # another process finished first: theirs is identical
        shutil.rmtree(staging, ignore_errors=True)
    return target


def server_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env["PATH"] = os.pathsep.join([str(Path(sys.prefix) / "bin"), env.get("PATH", "")])
    libs = [sysconfig.get_config_var("LIBDIR") or "", str(home.parent.parent / "nvidia_pytriton.libs")]
    env["LD_LIBRARY_PATH"] = os.pathsep.join([p for p in libs if p] + [env.get("LD_LIBRARY_PATH", "")]).rstrip(":")
    return env


def error_lines(log: str, limit: int = 20) -> list[str]:
    """The server's own lines that say which model failed and why."""
    lines = [line.strip() for line in log.splitlines() if _ERROR_LINE.search(line)]
    return lines[-limit:]


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM the server if the launching process dies (Linux prctl)."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class TritonServer:
    """The real tritonserver as a context manager: `start()` waits until ready, `stop()` shuts it down."""

    def __init__(self, model_repository: str | Path = "model_repository", grpc_port: int = 8001,
                 http_port: int = 8000, metrics_port: int = 8002, bind: str = "127.0.0.1",
                 startup_timeout: float = 120.0, log_path: str | Path | None = None,
                 extra_args: tuple[str, ...] = ()):
        self.model_repository = Path(model_repository).resolve()
        self.grpc_port, self.http_port, self.metrics_port = grpc_port, http_port, metrics_port
        self.bind = bind
        self.startup_timeout = startup_timeout
        self.log_path = Path(log_path) if log_path else None
        self.extra_args = tuple(extra_args)
        self._process: subprocess.Popen | None = None
        self._log_file = None

    @property
    def _local_host(self) -> str:
        return "127.0.0.1" if self.bind in ("0.0.0.0", "") else self.bind

    @property
    def grpc_url(self) -> str:
        return f"{self._local_host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"{self._local_host}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self._local_host}:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def command(self, backend_dir: Path, home: Path) -> list[str]:
        return [str(home / "bin" / "tritonserver"),
                f"--model-repository={self.model_repository}", f"--backend-directory={backend_dir}",
                f"--grpc-address={self.bind}", f"--grpc-port={self.grpc_port}",
                f"--http-address={self.bind}", f"--http-port={self.http_port}",
                f"--metrics-address={self.bind}", f"--metrics-port={self.metrics_port}",
                "--allow-gpu-metrics=false", "--model-control-mode=none", "--strict-readiness=true",
                "--exit-on-error=true", "--exit-timeout-secs=10", "--log-verbose=0", *self.extra_args]

    def log_text(self) -> str:
        if self.log_path and self.log_path.exists():
            return self.log_path.read_text(errors="replace")
        return ""

    def start(self) -> "TritonServer":
        if not self.model_repository.is_dir():
            raise TritonServerError(f"{self.model_repository}: model repository not found; "
                                    "build one with `python -m triton_repo.build`")
        home = triton_home()
        backend_dir = prepare_backend_dir(home)
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="tritonserver-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        self._log_file = open(self.log_path, "wb")
        # Own session: a terminal's Ctrl-C reaches us, and we shut the server down in order.
        self._process = subprocess.Popen(self.command(backend_dir, home), env=server_env(home),
                                         stdout=self._log_file, stderr=subprocess.STDOUT, start_new_session=True,
                                         preexec_fn=_die_with_parent)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                time.sleep(0.2)  # let the last log lines land
                raise TritonServerError(self._failure(f"tritonserver exited with code {self._process.returncode}"))
            if self.is_ready():
                return
            time.sleep(0.25)
        raise TritonServerError(self._failure(f"tritonserver not ready after {self.startup_timeout:.0f} s"))

    def _failure(self, headline: str) -> str:
        lines = error_lines(self.log_text()) or self.log_text().splitlines()[-15:]
        return "\n  ".join([f"{headline} (repository {self.model_repository}, log {self.log_path}):", *lines])

    def is_ready(self) -> bool:
        if self._process is None or self._process.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=1.0) as resp:
                return resp.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False

    def loaded_models(self) -> list[dict]:
        """Repository index from the server: name, version, state (READY / UNAVAILABLE) and reason."""
        request = urllib.request.Request(f"http://{self.http_url}/v2/repository/index", data=b"{}", method="POST")
        with urllib.request.urlopen(request, timeout=5.0) as resp:
            return json.loads(resp.read())

    def stop(self, timeout: float = 20.0) -> int | None:
        process, self._process = self._process, None
        code = None
        if process is not None:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            self._kill_leftover_stubs(process.pid)
            code = process.returncode
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return code

    @staticmethod
    def _kill_leftover_stubs(pgid: int) -> None:
        """Python-backend stubs run in the server's own process group; none may outlive it."""
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
