"""Fresh Python processes without paying torch's import each time: a pre-warmed parent that forks them.

A test that must run code in a fresh interpreter (a checkpoint loaded through remote code where retvlp is not
importable, `python -m retvlp.cli ...`, which Auto classes exist after a bare `import retvlp`) spends ~8 s of CPU
on this project's 2-core machines importing torch and what transformers 5.x pulls in with it (dynamo, DTensor,
scipy, sympy) before its first line does anything. `run(command, ...)` runs such a command in a child forked from
one long-lived server per test process that has imported only those (`PRELOADED`): never transformers, nor
huggingface_hub, nor retvlp, nor anything whose import reads the environment a test sets (HF_HOME, HF_HUB_OFFLINE
and the cache folders derived from them are read when transformers / huggingface_hub are imported, so in the
child, from the child's own environment). The child gets the command's argv, environment, working directory,
`sys.path` as the interpreter would build it, stdin from /dev/null, stdout / stderr of its own, and exits as the
interpreter does (an uncaught exception's traceback and status 1, `SystemExit`'s code, non-daemon threads
joined, atexit functions run, streams flushed) except that modules are not torn down one by one.

What it cannot reproduce, and so hands to a real `subprocess.run`: an executable other than this interpreter,
interpreter options (`-X`, `-W`, ...), and a `PYTHON*` variable that changes start-up (other than PYTHONPATH,
PYTHONDONTWRITEBYTECODE and PYTHONPYCACHEPREFIX, which the child applies). A test about what a bare import loads
(torch itself among it) must not use it.
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

# Imported by the server before any fork. Each reads no test-controlled environment at import; transformers'
# modelling utilities import all of them (torch.distributed.tensor and torch._dynamo alone are ~5 s here).
PRELOADED = (
    "numpy",
    "torch",
    "torch._dynamo",
    "torch._decomp",
    "torch.distributed.tensor",
    "torch.fx.experimental.symbolic_shapes",
    "scipy.optimize",
    "sympy",
    "safetensors.torch",
)
# Start-up variables the child applies itself; any other PYTHON* that differs from the server's sends the command
# to a real subprocess.
_APPLIED = {"PYTHONPATH", "PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX"}
_IGNORED = {"PYTHONHASHSEED", "PYTHONUNBUFFERED", "PYTHONIOENCODING"}


# ---------------------------------------------------------------------------------------------- client
def _server_environment() -> dict[str, str]:
    """The environment the server runs (or would start) with: this process's, without PYTHONPATH (each child
    applies its own)."""
    if _server is not None and _server.process.poll() is None:
        return _server.environment
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


class _Server:
    def __init__(self):
        self.environment = environment = _server_environment()
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,  # the server's own errors go to the test log
            text=True,
            env=environment,
            cwd=tempfile.gettempdir(),
        )
        self.lock = threading.Lock()
        ready = self.process.stdout.readline()
        if ready.strip() != "ready":
            raise RuntimeError(f"the pre-warmed Python server did not start (it said {ready!r})")

    def request(self, request: dict, timeout: float) -> int:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        started = json.loads(self.process.stdout.readline())  # {"pid": child}
        result: list = []
        reader = threading.Thread(target=lambda: result.append(self.process.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        if reader.is_alive():
            try:
                os.killpg(started["pid"], 9)
            except ProcessLookupError:
                pass
            reader.join(30)
            raise subprocess.TimeoutExpired(request["argv"], timeout)
        return json.loads(result[0])["returncode"]

    def close(self):
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()


_server: _Server | None = None


def _get_server() -> _Server:
    global _server
    if _server is None or _server.process.poll() is not None:
        _server = _Server()
        atexit.register(_server.close)
    return _server


def _forkable(command: list[str], environment: dict[str, str], server_environment: dict[str, str]) -> bool:
    if len(command) < 2 or command[0] != sys.executable:
        return False
    if command[1].startswith("-") and command[1] not in ("-c", "-m"):
        return False
    for key in set(environment) | set(server_environment):
        if key.startswith("PYTHON") and key not in _APPLIED and key not in _IGNORED:
            if environment.get(key) != server_environment.get(key):
                return False
    return True


def run(command, *, env=None, cwd=None, timeout: float = 300, check=False):
    """`subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)` for
    `[sys.executable, script | -c code | -m module, *args]`, forked from the pre-warmed server (see the module
    docstring); anything else runs as a real subprocess. Returns a `subprocess.CompletedProcess`."""
    command = [str(part) for part in command]
    environment = dict(os.environ if env is None else env)
    if not _forkable(command, environment, _server_environment()):
        return subprocess.run(
            command, capture_output=True, text=True, env=environment, cwd=cwd, timeout=timeout, check=check
        )
    server = _get_server()
    with tempfile.TemporaryDirectory(prefix="prewarmed-") as folder, server.lock:
        out, err = Path(folder, "stdout"), Path(folder, "stderr")
        request = {
            "argv": command[1:],
            "env": environment,
            "cwd": str(Path(cwd).resolve()) if cwd is not None else os.getcwd(),
            "stdout": str(out),
            "stderr": str(err),
        }
        returncode = server.request(request, timeout)
        done = subprocess.CompletedProcess(command, returncode, out.read_text(), err.read_text())
    if check:
        done.check_returncode()
    return done


# ---------------------------------------------------------------------------------------------- server
def _child(request: dict) -> None:
    """In the forked child: become the requested command. Never returns; exits as the interpreter would."""
    import importlib
    import runpy

    os.setpgid(0, 0)  # the client kills the child's whole group on a timeout
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(handle, fd)
        os.close(handle)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    environment = request["env"]
    if environment.get("PYTHONPYCACHEPREFIX"):
        sys.pycache_prefix = environment["PYTHONPYCACHEPREFIX"]
    sys.dont_write_bytecode = bool(environment.get("PYTHONDONTWRITEBYTECODE"))
    if environment.get("OMP_NUM_THREADS", "").isdigit():
        # OpenMP read OMP_NUM_THREADS when torch was imported in the server: apply the child's own value.
        import torch

        torch.set_num_threads(int(environment["OMP_NUM_THREADS"]))
    extra = [p for p in environment.get("PYTHONPATH", "").split(os.pathsep) if p]
    argv = request["argv"]
    base = [p for p in sys.path[1:] if p not in extra]
    if argv[0] == "-c":
        sys.path[:] = ["", *extra, *base]
        sys.argv = ["-c", *argv[2:]]
        main = type(sys)("__main__")
        main.__builtins__ = __builtins__
        sys.modules["__main__"] = main
        importlib.invalidate_caches()
        exec(compile(argv[1], "<string>", "exec"), main.__dict__)
    elif argv[0] == "-m":
        sys.path[:] = [os.getcwd(), *extra, *base]
        sys.argv = [argv[1], *argv[2:]]
        importlib.invalidate_caches()
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        script = os.path.abspath(argv[0])
        sys.path[:] = [os.path.dirname(script), *extra, *base]
        sys.argv = list(argv)
        importlib.invalidate_caches()
        runpy.run_path(script, run_name="__main__")


def _exit_status(error: BaseException | None) -> int:
    """The status the interpreter exits with after `error` escaped `__main__` (None: it returned), printing
    what it prints."""
    if error is None:
        return 0
    if isinstance(error, SystemExit):
        if error.code is None:
            return 0
        if isinstance(error.code, int):
            return error.code
        print(error.code, file=sys.stderr)
        return 1
    sys.excepthook(type(error), error, error.__traceback__)
    if isinstance(error, KeyboardInterrupt):
        return -1  # the interpreter dies of SIGINT here; _finish does the same
    return 1


def _finish(status: int) -> None:
    """Python's own shutdown, less the teardown of every module: join the non-daemon threads, run the atexit
    functions, flush the standard streams, exit."""
    import atexit as exits

    threading._shutdown()  # what Py_FinalizeEx does first (private, unchanged since Python 3.4)
    exits._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    if status == -1:
        import signal

        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(status & 0xFF)


def _serve() -> None:
    import gc
    import importlib

    for name in PRELOADED:
        importlib.import_module(name)
    # Out of the collector's sight: a child's collections would otherwise walk (and so copy) every preloaded
    # object's page.
    gc.freeze()
    print("ready", flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            sys.stdin = open(os.devnull)
            try:
                _child(request)
                error = None
            except BaseException as escaped:  # noqa: BLE001 (the interpreter's top level)
                error = escaped
            _finish(_exit_status(error))
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}), flush=True)


if __name__ == "__main__" and sys.argv[1:] == ["--serve"]:
    _serve()
