"""The embedded LLM endpoint: llama.cpp's OpenAI-compatible server as a child process.

:class:`EmbeddedServer` starts ``python -m llama_cpp.server`` (``llama-cpp-python[server]``)
with the bundled SmolLM2-135M-Instruct GGUF (or any GGUF) on free loopback ports, waits
until ``/v1/models`` answers, and stops it again on exit, on Ctrl-C and on error, so no
server process outlives facsynth:

* each server runs in its own process group, stopped with SIGTERM, then SIGKILL;
* ``with`` blocks, an ``atexit`` hook and a SIGTERM handler (installed only while a
  server runs and only where none was set) all lead to :meth:`EmbeddedServer.stop`;
  Ctrl-C arrives as ``KeyboardInterrupt`` and takes the same path;
* on Linux the child also asks the kernel for SIGTERM when its parent dies
  (``PR_SET_PDEATHSIG``), which covers a parent killed with SIGKILL.

A server that answers ``/v1/models`` may still be unable to generate: a llama.cpp built with
native CPU flags on one host dies with SIGSEGV or SIGILL at its first token on a host whose
CPU advertises instructions (AMX, AVX-512) that its VM does not let programs use. So
:meth:`EmbeddedServer.start` proves each instance can generate (a 1-token completion) before
it returns, and a crash there becomes one :class:`LLMError` line that names the signal and
the command that rebuilds llama-cpp-python portably (:data:`PORTABLE_CMAKE_ARGS`).

llama-cpp-python's server answers one request at a time (a global lock around the
model), so parallel calls only pay off with several server processes: ``instances``
starts that many and :class:`facsynth.agent.llm.LLMClient` spreads its calls over their
base URLs (least busy first). Each instance defaults to ONE thread: on a busy machine a
multi-threaded llama.cpp instance stalls in its spin-waiting thread barrier whenever one of
its threads is descheduled (measured on a shared 2-core box: a 48-token reply took 18-107 s
with 2 threads, 0.6-0.8 s with 1), so parallelism comes from processes, not threads.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, TYPE_CHECKING, Any

import httpx

from facsynth.agent.config import LOOPBACK, ServerConfig
from facsynth.errors import LLMError

if TYPE_CHECKING:
    from typing_extensions import Self

log = logging.getLogger(__name__)


LLAMA_CPP_PYTHON = "llama-cpp-python[server]>=0.3,<0.4"
"""The requirement of the ``server`` extra (keep pyproject.toml and the README in step)."""

PORTABLE_CMAKE_ARGS = (
    "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON "
    "-DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
)
"""llama.cpp build flags that run on any x86-64 CPU with AVX2, whatever else it advertises
(the README's install uses them)."""

CRASH_SIGNALS = {signal.SIGSEGV, signal.SIGILL, signal.SIGBUS, signal.SIGFPE, signal.SIGABRT}
"""Signals of a server that cannot run its own machine code on this CPU."""


def rebuild_command() -> str:
    """The command that rebuilds llama-cpp-python portably in this Python environment."""
    return (
        f'CMAKE_ARGS="{PORTABLE_CMAKE_ARGS}" {sys.executable} -m pip install --no-cache-dir --force-reinstall '
        f'--no-deps "{LLAMA_CPP_PYTHON}"'
    )


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def gguf_path(spec: str | None) -> Path:
    """The GGUF file a model spec names (default: the bundled SmolLM2-135M-Instruct; a writer
    name of :mod:`facsynth.agent.writers` is assembled from its installed parts)."""
    from facsynth.agent.writers import is_writer, writer_gguf
    from facsynth.tools.model import resolve

    if is_writer(spec):
        assert spec is not None
        return writer_gguf(spec)

    source = resolve(spec)
    if not source.gguf_file:
        raise LLMError(f"the embedded server needs a GGUF model; {source.name!r} is not one (give a .gguf file)")
    return Path(source.path) / source.gguf_file


@dataclass
class _Instance:
    port: int
    process: subprocess.Popen[bytes]
    log_file: IO[bytes]

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}/v1"


@dataclass
class EmbeddedServer:
    """llama.cpp's OpenAI-compatible server(s) on loopback, as a context manager.

    ``with EmbeddedServer(cfg, model_alias="smollm2") as server: server.base_urls``.
    """

    config: ServerConfig = field(default_factory=ServerConfig)
    model_alias: str = "smollm2-135m-instruct"
    """The model name the server answers to (and reports in ``/v1/models``)."""
    port: int | None = None
    """Port of the first instance; None: a free one. Further instances take free ports."""
    _instances: list[_Instance] = field(default_factory=list, init=False, repr=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, init=False, repr=False)
    _tmpdir: tempfile.TemporaryDirectory[str] | None = field(default=None, init=False, repr=False)
    checks: list[float] = field(default_factory=list, init=False, repr=False)
    """Seconds each instance took to generate its start-up token (empty when the check is off)."""

    # -- public ---------------------------------------------------------------------------------

    @property
    def base_urls(self) -> list[str]:
        """OpenAI base URLs (``http://127.0.0.1:PORT/v1``), one per instance."""
        return [inst.base_url for inst in self._instances]

    @property
    def base_url(self) -> str:
        """The first instance's base URL."""
        if not self._instances:
            raise LLMError("the embedded LLM server is not running")
        return self._instances[0].base_url

    @property
    def pids(self) -> list[int]:
        return [inst.process.pid for inst in self._instances]

    @property
    def running(self) -> bool:
        return bool(self._instances) and all(inst.process.poll() is None for inst in self._instances)

    def start(self) -> Self:
        """Start every instance and wait until each answers; on any failure stop them all."""
        with self._lock:
            if self._instances:
                return self
            model = gguf_path(self.config.gguf)
            self._tmpdir = tempfile.TemporaryDirectory(prefix="facsynth-llama-")
            _register(self)
        try:
            n = self.config.instances
            threads = self.config.threads_per_instance
            for i in range(n):
                self._start_instance(model, threads, self.port if i == 0 else None, i)
            deadline = time.monotonic() + self.config.startup_timeout_s
            for inst in self._instances:
                self._wait_ready(inst, deadline)
            self.checks = []
            if self.config.check_generation:
                for inst in self._instances:
                    self.checks.append(self._check_generates(inst))
        except BaseException:
            self.stop()
            raise
        log.info("embedded LLM server: %s (%d instance(s), %d thread(s) each) at %s",
                 model.name, n, threads, ", ".join(self.base_urls))
        return self

    def stop(self) -> None:
        """Stop every instance (SIGTERM to its process group, SIGKILL after 5 s). Idempotent."""
        with self._lock:
            instances, self._instances = self._instances, []
            for inst in instances:
                _stop_group(inst.process)
                inst.log_file.close()
            if self._tmpdir is not None:
                self._tmpdir.cleanup()
                self._tmpdir = None
            _unregister(self)
        if instances:
            log.info("embedded LLM server stopped")

    def check_alive(self) -> None:
        """Raise LLMError if an instance has exited."""
        for inst in self._instances:
            if inst.process.poll() is not None:
                raise LLMError(_death_message(inst, f"on port {inst.port}"))

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    # -- internals ------------------------------------------------------------------------------

    def _command(self, model: Path, port: int, threads: int) -> list[str]:
        cfg = self.config
        args = {
            "--model": str(model), "--model_alias": self.model_alias, "--host": LOOPBACK, "--port": str(port),
            "--n_threads": str(threads), "--n_threads_batch": str(threads), "--n_ctx": str(cfg.n_ctx),
            "--n_batch": str(cfg.n_batch), "--verbose": "False",
        }
        flat = [part for pair in args.items() for part in pair]
        if cfg.die_with_parent:  # through _child_main below
            return [sys.executable, "-m", "facsynth.agent.server", str(os.getpid()), cfg.module, *flat]
        return [sys.executable, "-m", cfg.module, *flat]

    def _start_instance(self, model: Path, threads: int, port: int | None, index: int) -> None:
        assert self._tmpdir is not None
        for attempt in range(3):  # a free port can be taken between picking and binding
            chosen = port or free_port()
            log_file = open(Path(self._tmpdir.name) / f"server-{index}-{attempt}.log", "w+b")  # noqa: SIM115
            process = subprocess.Popen(
                self._command(model, chosen, threads),
                stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: stopped as one, spared the terminal's Ctrl-C
            )
            inst = _Instance(chosen, process, log_file)
            self._instances.append(inst)
            if port is not None or not self._port_lost(inst):
                return
            self._instances.remove(inst)
            _stop_group(process)
            log_file.close()
        raise LLMError("the embedded LLM server found no free port on 127.0.0.1")

    def _port_lost(self, inst: _Instance) -> bool:
        """True when the instance died at once because its port was taken."""
        try:
            inst.process.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            return False
        return "address already in use" in _tail(inst.log_file).lower()

    def _wait_ready(self, inst: _Instance, deadline: float) -> None:
        url = inst.base_url + "/models"
        with httpx.Client(timeout=2.0) as http:
            while True:
                if inst.process.poll() is not None:
                    if inst.process.returncode < 0:
                        raise LLMError(_death_message(inst, "at start"))
                    raise LLMError(
                        f"the embedded LLM server exited at start (code {inst.process.returncode}): {_last_line(inst.log_file)}"
                    )
                try:
                    if http.get(url).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise LLMError(
                        f"the embedded LLM server did not answer {url} within {self.config.startup_timeout_s:.0f} s: "
                        f"{_last_line(inst.log_file) or 'no output'}"
                    )
                time.sleep(0.1)

    def _check_generates(self, inst: _Instance) -> float:
        """One 1-token completion; its latency. A crash or an error becomes one LLMError line."""
        url = inst.base_url + "/completions"
        body = {"model": self.model_alias, "prompt": "Hello", "max_tokens": 1, "temperature": 0.0}
        started = time.monotonic()
        problem: str
        try:
            with httpx.Client(timeout=self.config.startup_timeout_s) as http:
                reply = http.post(url, json=body)
            if reply.status_code == 200 and reply.json().get("choices"):
                return time.monotonic() - started
            problem = f"answered HTTP {reply.status_code}: {_first_line(reply.text) or 'no body'}"
        except (httpx.HTTPError, ValueError) as exc:
            problem = f"failed it ({type(exc).__name__}: {_first_line(str(exc)) or 'no detail'})"
        try:
            inst.process.wait(timeout=2.0)  # a crash closes the connection a moment before the exit is seen
        except subprocess.TimeoutExpired:
            raise LLMError(f"the embedded LLM server (llama.cpp) {problem} at its start-up check (a 1-token completion)") from None
        raise LLMError(_death_message(inst, "at its first completion")) from None


def _death_message(inst: _Instance, when: str) -> str:
    """One line: how the server process ended and, for a crash, how to rebuild it portably."""
    code = inst.process.returncode
    if code is not None and code < 0:
        try:
            sig = signal.Signals(-code)
        except ValueError:
            return f"the embedded LLM server (llama.cpp) was killed by signal {-code} {when}"
        if sig in CRASH_SIGNALS:
            return (
                f"the embedded LLM server (llama.cpp) crashed with {sig.name} {when}: this llama-cpp-python build "
                "uses CPU instructions this machine does not run (a native build, e.g. AMX or AVX-512 in a VM); "
                f"rebuild it portably: {rebuild_command()}"
            )
        return f"the embedded LLM server (llama.cpp) was stopped by {sig.name} {when}"
    last = _last_line(inst.log_file)
    return f"the embedded LLM server (llama.cpp) exited with code {code} {when}" + (f": {last}" if last else "")


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")[:200]


def _tail(log_file: IO[bytes], size: int = 8192) -> str:
    try:
        log_file.flush()
        end = log_file.seek(0, os.SEEK_END)
        log_file.seek(max(0, end - size))
        return log_file.read().decode("utf-8", "replace")
    except (OSError, ValueError):
        return ""


def _last_line(log_file: IO[bytes]) -> str:
    lines = [line.strip() for line in _tail(log_file).splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _stop_group(process: subprocess.Popen[bytes], grace_s: float = 5.0) -> None:
    """SIGTERM the child's process group, then SIGKILL it if it is still there after ``grace_s``."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=grace_s)
        return
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        log.warning("embedded LLM server %d ignored SIGTERM for %.0f s; killing it", process.pid, grace_s)
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


# -- process-wide safety nets: atexit and SIGTERM ------------------------------------------------

_servers: dict[int, EmbeddedServer] = {}
_registry_lock = threading.RLock()  # reentrant: the SIGTERM handler may run inside a held section
_previous_sigterm: Any = None
_atexit_registered = False


def _register(server: EmbeddedServer) -> None:
    global _atexit_registered, _previous_sigterm
    with _registry_lock:
        _servers[id(server)] = server
        if not _atexit_registered:
            atexit.register(stop_all)
            _atexit_registered = True
        if threading.current_thread() is threading.main_thread() and _previous_sigterm is None:
            current = signal.getsignal(signal.SIGTERM)
            if current in (signal.SIG_DFL, None):
                signal.signal(signal.SIGTERM, _on_sigterm)
                _previous_sigterm = current


def _unregister(server: EmbeddedServer) -> None:
    global _previous_sigterm
    with _registry_lock:
        _servers.pop(id(server), None)
        if (
            not _servers
            and _previous_sigterm is not None
            and threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) is _on_sigterm
        ):
            signal.signal(signal.SIGTERM, _previous_sigterm)
            _previous_sigterm = None


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    """SIGTERM to facsynth: unwind like Ctrl-C does, so ``with`` blocks stop their servers."""
    stop_all()
    raise SystemExit(128 + signum)


def stop_all() -> None:
    """Stop every embedded server this process started (the atexit hook)."""
    with _registry_lock:
        servers = list(_servers.values())
    for server in servers:
        server.stop()


def die_with_parent(parent: int) -> None:
    """Linux: SIGTERM this process when ``parent`` ends; exit at once when it has ended already
    (a server of a killed run, a worker of a killed ``run --workers``)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            log.debug("prctl(PR_SET_PDEATHSIG) is not available")
    if os.getppid() != parent:
        raise SystemExit(1)


def _child_main() -> None:
    """``python -m facsynth.agent.server PARENT_PID MODULE ARGS...``: the server module (llama_cpp.server)
    run so that it dies with its parent.

    On Linux the kernel sends SIGTERM to this process when the parent thread ends
    (``PR_SET_PDEATHSIG``); a parent already gone before that is caught by the ppid check.
    """
    import runpy

    parent = int(sys.argv.pop(1))
    module = sys.argv.pop(1)
    die_with_parent(parent)
    sys.argv[0] = module
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    _child_main()
