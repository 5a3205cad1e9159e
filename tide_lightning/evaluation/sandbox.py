"""Run untrusted, model-generated Python in a contained child process.

Code benchmarks (HumanEval, MBPP) execute whatever the model wrote. That code never
runs in the evaluating process: :func:`check_program` starts a fresh interpreter
(``python -I``) in its own session, inside a fresh temporary directory, with stdin on
``/dev/null``, and waits for a verdict: ``passed``, ``failed``, ``timeout`` or ``error``.

Containment comes in layers, strongest first; the first two are enforced by the kernel
and are used whenever the machine allows them (probed once per process, see
:func:`sandbox_capabilities`):

1. Namespaces (``unshare --net --pid``): no network interface but a downed loopback, and
   a private PID space, so the program cannot see or signal any process outside its
   own sandbox (not its parent, not ``kill(-1)``).
2. Privilege drop: when the evaluator runs as root, the program runs as ``nobody``, so
   it cannot write or delete files it does not own, and ``RLIMIT_NPROC`` is enforced
   (the kernel ignores it for root).
3. Resource limits on the program process: ``RLIMIT_CPU`` (CPU seconds),
   ``RLIMIT_AS`` (address space), ``RLIMIT_FSIZE`` (largest file written),
   ``RLIMIT_NPROC``, ``RLIMIT_NOFILE``, no core files.
4. An audit hook installed before the program runs: it refuses process creation
   (fork, exec, spawn, subprocess), signals (``os.kill``), sockets, ``ctypes``,
   raising resource limits, and writing, deleting, renaming or changing files outside
   the working directory. It is a guard against accidents and casual attacks, not a
   security boundary: Python code can reach around it (e.g. by monkeypatching the
   modules it relies on), which is why layers 1-3 exist.
5. The parent: a wall-clock deadline after which the whole session is killed, and
   stdout/stderr read incrementally with only the first ``max_output_bytes`` kept,
   so a program printing 100 MB costs no memory.

Verdict: ``passed`` requires the program's last statement to have completed. The
harness reports completion on a private pipe with a per-run random token, so an early
``sys.exit(0)`` or ``os._exit(0)`` is ``failed``, not ``passed``. A program that
deliberately inspects the harness's frames can find the token; the verdict defends
against accidents, the layers above defend the machine.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

STATUSES = ("passed", "failed", "timeout", "error")


@dataclass(frozen=True)
class ProgramResult:
    """Outcome of one sandboxed run.

    Attributes:
        status: ``passed`` (ran to the end, exit code 0), ``failed`` (an exception,
            a non-zero exit, or an exit before the end), ``timeout`` (wall-clock or
            CPU limit) or ``error`` (killed by a signal, a forbidden operation was
            attempted, or the sandbox itself failed).
        returncode: the program's exit code, ``-signal`` if a signal killed it,
            ``None`` if unknown (timeout, sandbox failure).
        stdout: the first ``max_output_bytes`` of standard output, decoded.
        stderr: the first ``max_output_bytes`` of standard error, decoded.
        truncated: whether any output was dropped.
        duration_s: wall-clock seconds from start to verdict.
        violations: audit events the hook refused, in order (e.g. ``os.fork``).
        detail: a short human-readable reason for the status.
    """

    status: str
    returncode: int | None
    stdout: str
    stderr: str
    truncated: bool
    duration_s: float
    violations: tuple[str, ...] = ()
    detail: str = ""

    @property
    def passed(self) -> bool:
        """Whether the status is ``passed``."""
        return self.status == "passed"


@dataclass(frozen=True)
class Isolation:
    """The kernel-level containment available on this machine.

    Attributes:
        namespaces: the program runs in fresh network and PID namespaces.
        user: uid the program runs as (``nobody``), or ``None`` for the caller's uid.
        python: the interpreter that runs programs.
    """

    namespaces: bool
    user: int | None
    python: str


def _sandbox_main() -> None:  # pragma: no cover - runs inside the sandbox interpreter
    """Entry point of the sandbox interpreter; self-contained (its source is sent via ``-c``).

    ``argv``: in_fd out_fd program workdir uid cpu_s mem_bytes fsize_bytes nproc nofile.
    Forks once: the parent stays a tiny supervisor (PID 1 in the namespace), reports the
    program's pid and wait status; the child sets limits, drops privileges, installs the
    audit hook and runs the program.
    """
    import contextlib
    import os
    import resource
    import sys

    in_fd, out_fd = int(sys.argv[1]), int(sys.argv[2])
    program, workdir = sys.argv[3], sys.argv[4]
    uid, cpu_s, mem_b, fsize_b, nproc, nofile = (int(a) for a in sys.argv[5:11])
    token = os.read(in_fd, 128).strip()
    os.close(in_fd)

    def emit(kind: bytes, value: str = "") -> None:
        with contextlib.suppress(OSError):
            os.write(out_fd, b"%s %s %s\n" % (token, kind, value.encode("utf-8", "replace")))

    pid = os.fork()
    if pid:
        emit(b"P", str(pid))
        _, wait_status = os.waitpid(pid, 0)
        emit(b"W", str(wait_status))
        os._exit(0)

    limits = [
        (resource.RLIMIT_CPU, (cpu_s, cpu_s + 1)),
        (resource.RLIMIT_AS, (mem_b, mem_b)),
        (resource.RLIMIT_FSIZE, (fsize_b, fsize_b)),
        (resource.RLIMIT_NPROC, (nproc, nproc)),
        (resource.RLIMIT_NOFILE, (nofile, nofile)),
        (resource.RLIMIT_CORE, (0, 0)),
    ]
    for which, value in limits:
        resource.setrlimit(which, value)
    if uid >= 0:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    with open(program, encoding="utf-8") as f:
        source = f.read()
    code = compile(source, program, "exec")

    realpath, fspath, isabs = os.path.realpath, os.fspath, os.path.isabs
    root = realpath(workdir)
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
    refused_prefixes = (
        "os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
        "os.kill", "os.killpg", "os.pidfd_open", "signal.pthread_kill", "subprocess.",
        "pty.", "socket.", "ctypes.", "resource.setrlimit", "resource.prlimit",
        "os.setns", "os.unshare", "os.mknod", "os.mkfifo",
    )  # fmt: skip
    refused_modules = ("ctypes", "_ctypes", "_posixsubprocess", "_xxsubinterpreters")
    # event -> (positions of paths that must stay inside, positions of dir_fd arguments)
    mutating = {
        "os.remove": ((0,), (1,)), "os.rmdir": ((0,), (1,)), "os.mkdir": ((0,), (2,)),
        "os.rename": ((0, 1), (2, 3)), "os.link": ((0, 1), (2, 3)),
        "os.symlink": ((1,), (2,)), "os.chmod": ((0,), (2,)), "os.chown": ((0,), (3,)),
        "os.utime": ((0,), (3,)), "os.truncate": ((0,), ()), "os.chflags": ((0,), ()),
        "os.lchflags": ((0,), ()), "os.setxattr": ((0,), ()), "os.removexattr": ((0,), ()),
        "shutil.rmtree": ((0,), (1,)), "shutil.copyfile": ((1,), ()),
        "shutil.copytree": ((1,), ()), "shutil.copymode": ((1,), ()),
        "shutil.copystat": ((1,), ()), "shutil.move": ((0, 1), ()),
        "shutil.chown": ((0,), ()),
    }  # fmt: skip
    busy = [False]

    def inside(path: object) -> bool:
        if isinstance(path, int):  # an already open descriptor
            return True
        name = os.fsdecode(fspath(path))
        real = realpath(name)
        return real == root or real.startswith(root + "/") or real == "/dev/null"

    def refuse(event: str) -> None:
        emit(b"V", event)
        raise PermissionError(f"sandbox: {event} is not allowed")

    def hook(event: str, args: tuple) -> None:
        if busy[0]:
            return
        busy[0] = True
        try:
            if event.startswith(refused_prefixes):
                refuse(event)
            elif event == "import":
                if args[0].split(".")[0] in refused_modules:
                    refuse(f"import {args[0]}")
            elif event == "open":
                path, mode, flags = args
                writes = (flags or 0) & write_flags or (mode and any(c in mode for c in "wax+"))
                if writes and isinstance(path, int):
                    return
                # os.open (mode None) may be relative to an unseen dir_fd: absolute only.
                if writes and (not inside(path) or (mode is None and not isabs(fspath(path)))):
                    refuse(f"open for writing {path!r}")
            elif event in mutating:
                paths, dir_fds = mutating[event]
                if any(i < len(args) and args[i] not in (None, -1) for i in dir_fds):
                    refuse(f"{event} with dir_fd")
                if any(i < len(args) and not inside(args[i]) for i in paths):
                    refuse(f"{event} {args[paths[0]]!r}")
        finally:
            busy[0] = False

    # Signalling through a pidfd raises no audit event: take those functions away.
    import signal

    for module in (os, signal, sys.modules.get("posix"), sys.modules.get("_signal")):
        for name in ("pidfd_open", "pidfd_send_signal"):
            with contextlib.suppress(AttributeError):
                delattr(module, name)
    sys.addaudithook(hook)
    del source, limits
    namespace = {"__name__": "__main__", "__file__": program, "__builtins__": __builtins__}
    exec(code, namespace)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    emit(b"D")


@functools.lru_cache(maxsize=1)
def _child_code() -> str:
    return inspect.getsource(_sandbox_main) + "\n_sandbox_main()\n"


def _namespace_prefix() -> list[str] | None:
    exe = shutil.which("unshare", path="/usr/bin:/bin:/usr/sbin:/sbin")
    if exe is None or not sys.platform.startswith("linux"):
        return None
    prefix = [exe, "--net", "--pid", "--fork", "--kill-child"]
    if os.geteuid() != 0:
        prefix.append("--map-root-user")
    return prefix


def _candidates() -> list[tuple[list[str], Isolation]]:
    """Isolation set-ups to try, strongest first."""
    ns = _namespace_prefix()
    nobody = 65534 if os.geteuid() == 0 else None
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    pythons = [sys.executable]
    system = shutil.which(version, path="/usr/local/bin:/usr/bin:/bin")
    if system and os.path.realpath(system) != os.path.realpath(sys.executable):
        pythons.append(system)
    found = []
    for use_ns in [True, False] if ns else [False]:
        users = [nobody, None] if nobody is not None else [None]
        for user in users:
            # A non-root user cannot switch interpreters for a privilege drop it cannot do.
            for python in pythons if user is not None else pythons[:1]:
                found.append((ns if use_ns else [], Isolation(use_ns, user, python)))
    return found


_CANARY = f"""
import collections, functools, hashlib, heapq, itertools, json, math, random, re, string
import sys
assert sys.version_info[:2] == ({sys.version_info.major}, {sys.version_info.minor})
with open("canary.txt", "w") as f:
    f.write("ok")
"""


@functools.lru_cache(maxsize=1)
def _isolation() -> tuple[tuple[str, ...], Isolation]:
    for prefix, isolation in _candidates():
        result = _run(_CANARY, prefix, isolation, timeout=20.0, memory_mb=1024)
        if result.passed:
            return tuple(prefix), isolation
    raise RuntimeError("no sandbox set-up works on this machine: cannot run programs")


def sandbox_capabilities() -> Isolation:
    """The isolation :func:`check_program` uses here (probed once, then cached)."""
    return _isolation()[1]


def check_program(
    source: str,
    timeout: float = 10.0,
    *,
    memory_mb: int = 1024,
    max_file_mb: int = 16,
    max_processes: int = 64,
    max_open_files: int = 128,
    max_output_bytes: int = 65536,
) -> ProgramResult:
    """Run ``source`` as ``__main__`` in a sandboxed interpreter and judge it.

    Safe to call from several threads at once.

    Args:
        source: the complete program (solution followed by its tests).
        timeout: wall-clock seconds; the CPU limit is ``ceil(timeout)`` seconds.
        memory_mb: address-space limit of the program process.
        max_file_mb: largest file the program may write.
        max_processes: ``RLIMIT_NPROC`` (threads count; enforced for non-root users).
        max_open_files: ``RLIMIT_NOFILE``.
        max_output_bytes: bytes kept of each of stdout and stderr; the rest is drained
            and dropped.

    Returns:
        The :class:`ProgramResult`; never raises for anything the program does.
    """
    prefix, isolation = _isolation()
    return _run(
        source,
        list(prefix),
        isolation,
        timeout=timeout,
        memory_mb=memory_mb,
        max_file_mb=max_file_mb,
        max_processes=max_processes,
        max_open_files=max_open_files,
        max_output_bytes=max_output_bytes,
    )


def _run(
    source: str,
    prefix: list[str],
    isolation: Isolation,
    *,
    timeout: float,
    memory_mb: int,
    max_file_mb: int = 16,
    max_processes: int = 64,
    max_open_files: int = 128,
    max_output_bytes: int = 65536,
) -> ProgramResult:
    start = time.monotonic()
    base = tempfile.mkdtemp(prefix="tide_sandbox_")
    try:
        os.chmod(base, 0o755)
        program = os.path.join(base, "program.py")
        workdir = os.path.join(base, "work")
        os.mkdir(workdir, 0o700)
        with open(program, "w", encoding="utf-8") as f:
            f.write(source)
        os.chmod(program, 0o444)
        uid = -1 if isolation.user is None else isolation.user
        if uid >= 0:
            os.chown(workdir, uid, uid)
        token = secrets.token_hex(16).encode()
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        os.write(in_w, token + b"\n")
        os.close(in_w)
        argv = [
            *prefix,
            isolation.python,
            "-I",
            "-c",
            _child_code(),
            str(in_r),
            str(out_w),
            program,
            workdir,
            str(uid),
            str(max(1, int(-(-timeout // 1)))),
            str(memory_mb * 2**20),
            str(max_file_mb * 2**20),
            str(max_processes),
            str(max_open_files),
        ]
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": workdir,
            "TMPDIR": workdir,
            "LANG": "C.UTF-8",
            "OMP_NUM_THREADS": "1",
        }
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=workdir,
                env=env,
                pass_fds=(in_r, out_w),
                start_new_session=True,
            )
        except OSError as exc:
            return ProgramResult("error", None, "", "", False, 0.0, detail=f"cannot start: {exc}")
        finally:
            os.close(in_r)
            os.close(out_w)
        streams, timed_out = _collect(proc, out_r, start + timeout, max_output_bytes, isolation)
        os.close(out_r)
        return _verdict(token, streams, timed_out, time.monotonic() - start)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _collect(
    proc: subprocess.Popen, status_fd: int, deadline: float, cap: int, isolation: Isolation
) -> tuple[dict[str, bytearray | bool], bool]:
    """Read stdout, stderr and the status pipe until all close or the deadline passes."""
    kept: dict[str, bytearray | bool] = {
        "stdout": bytearray(),
        "stderr": bytearray(),
        "status": bytearray(),
        "truncated": False,
    }
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ, "stdout")
    selector.register(proc.stderr, selectors.EVENT_READ, "stderr")
    selector.register(status_fd, selectors.EVENT_READ, "status")
    timed_out = False
    try:
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            for key, _ in selector.select(min(remaining, 0.5)):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fileobj)
                    continue
                buf = kept[key.data]
                room = cap - len(buf)
                if room < len(chunk):
                    kept["truncated"] = True
                buf += chunk[: max(room, 0)]
    finally:
        selector.close()
        _kill_all(proc, bytes(kept["status"]), isolation)
        proc.stdout.close()
        proc.stderr.close()
    return kept, timed_out


def _kill_all(proc: subprocess.Popen, status: bytes, isolation: Isolation) -> None:
    """Kill the session, and the program by pid in case it left the session.

    The session id is our unreaped child's pid, so it cannot have been reused. The
    program's pid is only signalled while the supervisor has not reaped it (no ``W``
    message) and only without a PID namespace (inside one, the pid is not a host pid;
    the namespace dies with its first process anyway).
    """
    lines = [line.split(b" ") for line in status.splitlines()]
    reaped = any(parts[1:2] == [b"W"] for parts in lines)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    if not reaped and not isolation.namespaces:
        for parts in lines:
            if parts[1:2] == [b"P"] and len(parts) > 2 and parts[2].isdigit():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(int(parts[2]), signal.SIGKILL)
    proc.wait()


def _verdict(
    token: bytes, streams: dict[str, bytearray | bool], timed_out: bool, duration: float
) -> ProgramResult:
    messages: dict[bytes, list[str]] = {}
    for line in bytes(streams["status"]).splitlines():
        parts = line.split(b" ", 2)
        if len(parts) >= 2 and parts[0] == token:
            value = parts[2].decode("utf-8", "replace") if len(parts) > 2 else ""
            messages.setdefault(parts[1], []).append(value)
    out = bytes(streams["stdout"]).decode("utf-8", "replace")
    err = bytes(streams["stderr"]).decode("utf-8", "replace")
    violations = tuple(messages.get(b"V", []))

    def result(status: str, code: int | None, detail: str) -> ProgramResult:
        truncated = bool(streams["truncated"])
        return ProgramResult(status, code, out, err, truncated, duration, violations, detail)

    if timed_out:
        return result("timeout", None, "wall-clock limit reached")
    if b"W" not in messages:
        return result("error", None, "the sandbox supervisor did not report")
    wait_status = int(messages[b"W"][-1])
    if os.WIFSIGNALED(wait_status):
        sig = os.WTERMSIG(wait_status)
        if sig in (signal.SIGXCPU, signal.SIGKILL):
            return result("timeout", -sig, f"CPU limit ({signal.Signals(sig).name})")
        return result("error", -sig, f"killed by {signal.Signals(sig).name}")
    code = os.waitstatus_to_exitcode(wait_status)
    if violations:
        return result("error", code, f"forbidden operation: {violations[0]}")
    if code == 0 and b"D" in messages:
        return result("passed", 0, "")
    if code == 0:
        return result("failed", 0, "exited before the end of the program")
    return result("failed", code, f"exit code {code}")
