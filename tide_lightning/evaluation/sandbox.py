"""Run untrusted, model-generated Python in a sandbox that the kernel enforces.

Code benchmarks (HumanEval, MBPP) execute whatever the model wrote. That code never
runs in the evaluating process, and none of the guarantees below rest on the
program's goodwill: each one holds even if the program switches off the in-process
audit hook (it can: the hook lives in its own interpreter).

:func:`check_program` starts ``python -I -S -c <supervisor>`` in a new session. The
supervisor, on Linux where the kernel allows it (probed once, see
:func:`sandbox_capabilities`):

1. ``unshare(2)``: new mount, PID, network, IPC and UTS namespaces, plus a user
   namespace when the evaluator is not root. It forks the *monitor*, PID 1 of the new
   PID namespace: when the monitor dies, the kernel kills everything in it.
2. The monitor builds a minimal root on a tmpfs and ``pivot_root``\\ s into it:
   read-only, nosuid bind mounts of ``/usr``, ``/bin``, ``/lib*``, ``/etc/ld.so.cache``
   and the interpreter's standard library (its ``site-packages`` masked), a fresh
   ``/proc`` for the new PID namespace, ``/dev/{null,zero,full,random,urandom}``, and a
   private tmpfs ``/tmp`` (size- and inode-capped) that is the working directory. The
   project, run folders, checkpoints, home directories and the host's ``/tmp`` are
   simply not there, and the tmpfs vanishes with the namespace.
3. The monitor forks the program process, which closes every inherited descriptor
   but its own pipes, joins a fresh session keyring, sets resource limits (CPU
   seconds, address space, file size, processes, open files, no core files), drops
   privileges (as root: a fresh uid nobody uses, one per run), ends up root of a user
   namespace that may create no nested one, with no capability and an empty bounding
   set, sets ``no_new_privs``, installs the audit hook and runs the program.
4. Memory for the whole process tree: a cgroup v2 (``memory.max``, ``pids.max``)
   where the evaluator's cgroup delegates the memory controller; otherwise
   ``RLIMIT_NPROC`` x ``RLIMIT_AS`` <= ``memory_mb`` (:func:`memory_plan`).
5. Without namespaces (or when a mount is refused), Landlock where the kernel has it:
   reads only in the system and interpreter folders, writes only in the run's own
   directory, no TCP, no signals leaving the run.

Verdict: the monitor, which the program can neither signal (PID 1 ignores it), trace
nor read (it keeps its capabilities or runs as root, and is not dumpable), reports
the program's wait status on a pipe only it holds. ``passed`` needs exit status 0 and
the completion token: the monitor writes a fresh random token into a pipe *after*
forking the program (so it is nowhere in the program's memory); the harness reads it
only after the program's last statement and echoes it back. Anything else arriving
on that pipe is a forgery and makes the verdict ``error``.

Where a layer is missing (no namespaces, e.g. unprivileged user namespaces disabled;
no writable cgroup v2; no Landlock), the others still hold and
:func:`sandbox_capabilities` lists what is missing; docs/evaluation.md has the table.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import logging
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

logger = logging.getLogger(__name__)

STATUSES = ("passed", "failed", "timeout", "error")

# Without a cgroup, each process gets memory_mb / n of address space; below this a
# Python process cannot do much, so fewer processes are allowed instead.
_PROCESS_FLOOR_MB = 256
# Root evaluator: the program runs as _UID_BASE + the supervisor's host pid, a uid that
# owns no file and no other process (so RLIMIT_NPROC counts this run only).
_UID_BASE = 1_900_000_000


@dataclass(frozen=True)
class ProgramResult:
    """Outcome of one sandboxed run.

    Attributes:
        status: ``passed`` (ran to the end, exit code 0), ``failed`` (an exception,
            a non-zero exit, an exit before the end, invalid source, memory limit),
            ``timeout`` (wall-clock or CPU limit) or ``error`` (killed by a signal, a
            forbidden operation was attempted, a forged completion, or the sandbox
            itself failed).
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
    """The containment :func:`check_program` uses on this machine.

    Attributes:
        namespaces: mount, PID, network, IPC and UTS namespaces.
        user_namespace: an unprivileged user namespace (evaluator not root).
        private_root: minimal read-only root, fresh ``/proc``, private tmpfs ``/tmp``.
        unique_uid: the program runs as a fresh, otherwise unused uid (root evaluator).
        memory: ``"cgroup"`` (one limit for the tree) or ``"rlimit"`` (count x cap).
        python: the interpreter that runs programs.
        landlock: the Landlock ABI that confines the program's files where there is
            no private root (0: not used).
        missing: one sentence per layer this machine lacks, empty when none.
    """

    namespaces: bool
    user_namespace: bool
    private_root: bool
    unique_uid: bool
    memory: str
    python: str
    landlock: int = 0
    missing: tuple[str, ...] = ()


def memory_plan(memory_mb: int, max_processes: int, cgroup: bool) -> tuple[int, int]:
    """Process count and per-process address space (MiB) for one run.

    With a cgroup the kernel bounds the tree's total, so each process may use all of
    ``memory_mb``. Without one, ``count * per_process <= memory_mb`` bounds it: at
    most ``memory_mb // 256`` processes (threads count), each with an equal share.

    Returns:
        ``(processes, per_process_mb)``.
    """
    if cgroup:
        return max(1, max_processes), memory_mb
    processes = max(1, min(max_processes, memory_mb // _PROCESS_FLOOR_MB))
    return processes, memory_mb // processes


def _supervisor_main() -> None:  # pragma: no cover - runs inside the sandbox interpreter
    """Entry point of the sandbox interpreter; self-contained (its source is sent via ``-c``).

    ``argv[1]``: a descriptor to read the JSON configuration from. Writes ``E <msg>``
    (set-up failed), ``P <pid>``, ``V <event>`` and ``W <wait status> <done>`` lines to
    the status descriptor, which only this process and the monitor hold.
    """
    import contextlib
    import ctypes
    import json
    import os
    import resource
    import signal
    import sys

    with os.fdopen(int(sys.argv[1]), "rb") as f:
        cfg = json.loads(f.read())
    status_fd = cfg["status_fd"]

    def report(kind: str, value: str = "") -> None:
        line = f"{kind} {value}".replace("\n", " ")[:4000] + "\n"
        with contextlib.suppress(OSError):
            os.write(status_fd, line.encode("utf-8", "replace"))

    linux = sys.platform.startswith("linux")  # elsewhere: limits and the hook only
    libc = ctypes.CDLL(None, use_errno=True)
    if linux:
        libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
        libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
        libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4

    def check(ret: int, what: str) -> None:
        if ret != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"{what}: {os.strerror(err)}")

    def prctl(option: int, arg: int, what: str | None = None) -> None:
        if linux:
            ret = libc.prctl(option, arg, 0, 0, 0)
            if what is not None:
                check(ret, what)

    ms = {"rdonly": 1, "nosuid": 2, "nodev": 4, "noexec": 8, "remount": 32,
          "bind": 4096, "move": 8192, "rec": 16384, "private": 1 << 18}  # fmt: skip

    def mount(src: str | None, dst: str, fstype: str | None, flags: int, data: str | None):
        enc = [None if s is None else os.fsencode(s) for s in (src, dst, fstype, data)]
        check(libc.mount(enc[0], enc[1], enc[2], flags, enc[3]), f"mount {dst}")

    def locked_flags(path: str) -> int:
        # In a user namespace a remount must keep the flags the outer mount has.
        st_to_ms = {os.ST_NOSUID: 2, os.ST_NODEV: 4, os.ST_NOEXEC: 8,
                    os.ST_NOATIME: 1024, os.ST_NODIRATIME: 2048, os.ST_RELATIME: 1 << 21}  # fmt: skip
        got = os.statvfs(path).f_flag
        return sum(m for s, m in st_to_ms.items() if got & s)

    def mounts_under(root: str) -> list[str]:
        found = []
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                point = line.split(" ")[4].encode().decode("unicode_escape")
                if point == root or point.startswith(root.rstrip("/") + "/"):
                    found.append(point)
        return found

    def bind_ro(src: str, dst: str) -> None:
        if os.path.islink(src) and not os.path.isabs(os.readlink(src)):
            os.symlink(os.readlink(src), dst)  # merged /usr: /bin -> usr/bin
            return
        real = os.path.realpath(src)
        if os.path.isdir(real):
            os.makedirs(dst, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            open(dst, "w").close()
        mount(real, dst, None, ms["bind"] | ms["rec"], None)
        for point in mounts_under(dst):  # submounts too: a recursive bind keeps them rw
            flags = ms["remount"] | ms["bind"] | ms["rdonly"] | ms["nosuid"] | ms["nodev"]
            mount(None, point, None, flags | locked_flags(point), None)

    def landlock(abi: int, readable: list[str], writable: str) -> None:
        # Where there is no private root: the kernel refuses file access outside these
        # paths, TCP (ABI >= 4), and signals and abstract sockets leaving the run (ABI >= 6).
        import struct

        fs_all = (1 << {1: 13, 2: 14, 3: 15, 4: 15}.get(abi, 16)) - 1
        file_rights = 1 | 2 | 4 | (1 << 14 if abi >= 3 else 0) | (1 << 15 if abi >= 5 else 0)
        attr = struct.pack("=QQQ", fs_all, 3 if abi >= 4 else 0, 3 if abi >= 6 else 0)
        size = 8 if abi < 4 else (16 if abi < 6 else 24)
        ruleset = libc.syscall(444, ctypes.create_string_buffer(attr, 24), ctypes.c_size_t(size), 0)
        check(0 if ruleset >= 0 else -1, "landlock_create_ruleset")

        def allow(path: str, rights: int) -> None:
            if not os.path.exists(path):
                return
            parent = os.open(path, os.O_PATH | os.O_CLOEXEC)
            if not os.path.isdir(path):
                rights &= file_rights
            rule = ctypes.create_string_buffer(struct.pack("=Qi", rights, parent), 12)
            check(libc.syscall(445, ruleset, 1, rule, 0), f"landlock_add_rule {path}")
            os.close(parent)

        for path in readable:
            allow(path, 1 | 4 | 8)  # execute, read files, list directories
        for name in ("null", "zero", "full", "random", "urandom"):
            allow(f"/dev/{name}", 2 | 4)
        allow(writable, fs_all)
        check(libc.syscall(446, ruleset, 0), "landlock_restrict_self")
        os.close(ruleset)

    def build_root(newroot: str, program_bytes: bytes, tmp_uid: int) -> None:
        mount(None, "/", None, ms["rec"] | ms["private"], None)  # nothing propagates out
        size = f"size={4 * 2**20 + len(program_bytes)},mode=0755"
        mount("tide-root", newroot, "tmpfs", ms["nosuid"] | ms["nodev"], size)
        for path in cfg["binds"]:
            if os.path.lexists(path):
                bind_ro(path, newroot + path)
        for path in cfg["masks"]:
            if os.path.isdir(newroot + path):
                mount("tide-mask", newroot + path, "tmpfs", ms["rdonly"] | ms["nosuid"], "size=4k")
        dev = newroot + "/dev"
        os.makedirs(dev, exist_ok=True)
        for name in ("null", "zero", "full", "random", "urandom"):
            open(f"{dev}/{name}", "w").close()
            mount(f"/dev/{name}", f"{dev}/{name}", None, ms["bind"], None)
        for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                             ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):  # fmt: skip
            os.symlink(target, f"{dev}/{name}")
        os.mkdir(newroot + "/proc")
        proc_flags = ms["nosuid"] | ms["nodev"] | ms["noexec"]
        try:  # hidepid: the program does not even see the monitor
            mount("proc", newroot + "/proc", "proc", proc_flags, "hidepid=2")
        except OSError:
            mount("proc", newroot + "/proc", "proc", proc_flags, None)
        os.mkdir(newroot + "/tmp")
        tmp_opts = f"size={cfg['tmp_bytes']},nr_inodes={cfg['tmp_inodes']},mode=0700"
        tmp_flags = ms["nosuid"] | ms["nodev"] | ms["noexec"]
        mount("tide-tmp", newroot + "/tmp", "tmpfs", tmp_flags, tmp_opts)
        os.chown(newroot + "/tmp", tmp_uid, tmp_uid)
        with open(newroot + "/program.py", "wb") as f:
            f.write(program_bytes)
        os.chmod(newroot + "/program.py", 0o444)
        os.chdir(newroot)
        pivot = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}
        number = pivot.get(os.uname().machine)
        if number is not None and libc.syscall(number, b".", b".") == 0:
            check(libc.umount2(b".", 2), "detach the old root")  # MNT_DETACH
        else:  # what switch_root does: move the new root over / and chroot into it
            mount(newroot, "/", None, ms["move"], None)
            os.chroot(".")
        os.chdir("/")
        flags = ms["remount"] | ms["rdonly"] | ms["nosuid"] | ms["nodev"]
        mount(None, "/", None, flags, None)

    # --- the supervisor: namespaces, then the monitor (PID 1 inside) ---
    try:
        with open(cfg["program"], "rb") as f:
            program_bytes = f.read()
        if cfg["cgroup"]:
            with open(os.path.join(cfg["cgroup"], "cgroup.procs"), "w") as f:
                f.write("0")
        root_evaluator = os.geteuid() == 0
        program_uid = cfg["uid_base"] + os.getpid() if root_evaluator else 0
        if cfg["namespaces"]:
            uid, gid = os.geteuid(), os.getegid()
            flags = 0x00020000 | 0x04000000 | 0x08000000 | 0x20000000 | 0x40000000
            if cfg["user_namespace"]:
                flags |= 0x10000000
            check(libc.unshare(flags), "unshare")
            if cfg["user_namespace"]:
                for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"),
                                   ("gid_map", f"0 {gid} 1")):  # fmt: skip
                    with open(f"/proc/self/{name}", "w") as f:
                        f.write(text)
            monitor = os.fork()
            if monitor:
                os.close(status_fd)
                _, wait_status = os.waitpid(monitor, 0)
                os._exit(os.waitstatus_to_exitcode(wait_status) & 0xFF)
            prctl(1, signal.SIGKILL, "PR_SET_PDEATHSIG")
            with contextlib.suppress(OSError):
                libc.sethostname(b"sandbox", 7)
        if not root_evaluator:
            program_uid = os.geteuid()
        if cfg["private_root"]:
            build_root(cfg["root"], program_bytes, program_uid)
            workdir, program_path = "/tmp", "/program.py"
        else:
            workdir, program_path = cfg["workdir"], cfg["program"]
            if root_evaluator:
                os.chown(workdir, program_uid, program_uid)
        os.chdir(workdir)
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # PID 1 then ignores it from inside
        prctl(4, 0)  # PR_SET_DUMPABLE 0: /proc/1/fd etc. stay closed
        token_r, token_w = os.pipe()
        done_r, done_w = os.pipe()
        violation_r, violation_w = os.pipe()
    except BaseException as exc:
        report("E", f"{type(exc).__name__}: {exc}")
        os._exit(70)

    program = os.fork()
    if program == 0:
        # --- the program process: limits, privileges, hook, then the program ---
        try:
            keep = {0, 1, 2, token_r, done_w, violation_w}
            for fd in range(3, max(keep) + 1):
                if fd not in keep:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            os.closerange(max(keep) + 1, 65536)
            os.set_blocking(violation_w, False)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            prctl(4, 1)  # dumpable again: its own /proc/self works
            prctl(1, signal.SIGKILL, "PR_SET_PDEATHSIG")
            # A fresh, empty session keyring: the evaluator's keys are not "possessed".
            keyctl = {"x86_64": 250, "aarch64": 219, "riscv64": 219, "ppc64le": 271}
            if linux and os.uname().machine in keyctl:
                libc.syscall(keyctl[os.uname().machine], 1, None)  # JOIN_SESSION_KEYRING
            cpu_s = cfg["cpu_s"]
            for which, value in [
                (resource.RLIMIT_CPU, (cpu_s, cpu_s + 1)),
                (resource.RLIMIT_AS, (cfg["as_bytes"],) * 2),
                (resource.RLIMIT_FSIZE, (cfg["fsize_bytes"],) * 2),
                (resource.RLIMIT_NPROC, (cfg["nproc"],) * 2),
                (resource.RLIMIT_NOFILE, (cfg["nofile"],) * 2),
                (resource.RLIMIT_CORE, (0, 0)),
            ]:
                resource.setrlimit(which, value)

            def drop_bounding_set() -> None:
                with open("/proc/sys/kernel/cap_last_cap") as f:
                    last_cap = int(f.read())
                for cap in range(last_cap + 1):
                    prctl(24, cap)  # PR_CAPBSET_DROP

            if os.geteuid() == 0:  # root or root of the user namespace
                if linux:
                    drop_bounding_set()
                if root_evaluator:
                    os.setgroups([])
                    os.setgid(program_uid)
                    os.setuid(program_uid)  # clears every capability
                    prctl(4, 1)  # a uid change made it non-dumpable: /proc/self back
                    if linux:  # a user namespace of its own, only to forbid nested ones
                        with contextlib.suppress(OSError):
                            check(libc.unshare(0x10000000), "unshare")
                            for name, text in (("setgroups", "deny"),
                                               ("uid_map", f"0 {program_uid} 1"),
                                               ("gid_map", f"0 {program_uid} 1")):  # fmt: skip
                                with open(f"/proc/self/{name}", "w") as f:
                                    f.write(text)
                if linux and os.geteuid() == 0:  # root of a user namespace
                    # No nested user namespaces (the usual door to kernel exploits, and
                    # to mounting a sysfs of its own), then not one capability left.
                    limit = "/proc/sys/user/max_user_namespaces"
                    with contextlib.suppress(OSError), open(limit, "w") as f:
                        f.write("0")
                    drop_bounding_set()  # a new user namespace starts with a full one

                    class Header(ctypes.Structure):
                        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

                    empty = (ctypes.c_uint32 * 6)()
                    check(libc.capset(ctypes.byref(Header(0x20080522, 0)), empty), "capset")
            prctl(38, 1, "PR_SET_NO_NEW_PRIVS")
            if cfg["landlock"] and not cfg["private_root"]:
                landlock(cfg["landlock"], cfg["binds"] + [program_path], workdir)
            os.environ.clear()
            os.environ.update(PATH="/usr/local/bin:/usr/bin:/bin", HOME=workdir,
                              TMPDIR=workdir, LANG="C.UTF-8", OMP_NUM_THREADS="1")  # fmt: skip
            code = compile(program_bytes, program_path, "exec", dont_inherit=True)
        except SyntaxError:
            sys.excepthook(*sys.exc_info())
            os._exit(1)
        except BaseException as exc:
            with contextlib.suppress(BaseException):
                sys.stderr.write(f"sandbox set-up failed: {exc}\n")
            os._exit(71)
        _harness(code, program_path, workdir, token_r, done_w, violation_w)

    # --- the monitor: wait, collect the completion token, report ---
    for fd in (token_r, done_w, violation_w):
        os.close(fd)
    report("P", str(program))
    token = os.urandom(16).hex().encode()  # only now: the program's memory never held it
    with contextlib.suppress(OSError):  # the program may be gone already
        os.write(token_w, token)
    os.close(token_w)
    # Relay refused events as they come (a looping program never exits) and reap
    # orphans (PID 1 inherits them) until the program itself is gone.
    import select

    pending, relayed, wait_status, watched = b"", 0, None, [violation_r]
    exited = []  # a pidfd wakes the monitor the moment the program exits
    with contextlib.suppress(AttributeError, OSError):
        exited.append(os.pidfd_open(program))
    while wait_status is None:
        readable, _, _ = select.select(watched + exited, [], [], 0.05)
        if violation_r in readable:
            chunk = b""
            with contextlib.suppress(OSError):
                chunk = os.read(violation_r, 65536)
            if not chunk:  # every writer closed it: stop watching, or this would spin
                watched = []
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines[: max(0, 50 - relayed)]:
                report("V", line.decode("utf-8", "replace"))
            relayed += len(lines)
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                report("E", "the program process vanished")
                os._exit(72)
            if pid == 0:
                break
            if pid == program:
                wait_status = status
                break
    os.set_blocking(done_r, False)
    received = b""
    with contextlib.suppress(OSError):
        received = os.read(done_r, 4096)
    done = "1" if received == token else ("0" if not received else "x")
    os.set_blocking(violation_r, False)
    with contextlib.suppress(OSError):
        for line in (pending + os.read(violation_r, 65536)).split(b"\n")[: max(0, 50 - relayed)]:
            if line:
                report("V", line.decode("utf-8", "replace"))
    report("W", f"{wait_status} {done}")
    os._exit(0)


def _harness(  # pragma: no cover - runs inside the sandbox interpreter
    code: object, program_path: str, workdir: str, token_r: int, done_w: int, violation_w: int
) -> None:
    """Install the audit hook, run ``code`` as ``__main__``, echo the token at the end.

    Never returns: exits with the program's status (0 after its last statement, the
    ``SystemExit`` code, or 1 after an uncaught exception). Only after the last
    statement does it read the token the monitor wrote and send it back.
    """
    import contextlib
    import os
    import sys

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
        real = realpath(os.fsdecode(fspath(path)))
        return real == root or real.startswith(root + "/") or real == "/dev/null"

    def refuse(event: str) -> None:
        with contextlib.suppress(OSError):
            os.write(violation_w, event.encode("utf-8", "replace")[:1000] + b"\n")
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

    # The supervisor's ctypes must not be reachable without an import (the hook sees those).
    for name in [m for m in sys.modules if m == "ctypes" or m.startswith(("ctypes.", "_ctypes"))]:
        del sys.modules[name]
    # Signalling through a pidfd raises no audit event: take those functions away.
    import signal

    for module in (os, signal, sys.modules.get("posix"), sys.modules.get("_signal")):
        for name in ("pidfd_open", "pidfd_send_signal"):
            with contextlib.suppress(AttributeError):
                delattr(module, name)
    sys.argv = [program_path]
    sys.addaudithook(hook)
    namespace = {"__name__": "__main__", "__file__": program_path, "__builtins__": __builtins__}
    exit_code, completed = 0, False
    try:
        exec(code, namespace)
        completed = True
    except SystemExit as exc:
        if exc.code is None:
            exit_code = 0
        elif isinstance(exc.code, int):
            exit_code = exc.code & 0xFF
        else:
            with contextlib.suppress(BaseException):
                print(exc.code, file=sys.stderr)
            exit_code = 1
    except BaseException:
        with contextlib.suppress(BaseException):
            sys.excepthook(*sys.exc_info())
        exit_code = 1
    with contextlib.suppress(BaseException):
        threading = sys.modules.get("threading")
        if threading is not None:
            threading._shutdown()  # wait for non-daemon threads, as the interpreter does
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BaseException):
            stream.flush()
    if completed:
        with contextlib.suppress(OSError):
            os.write(done_w, os.read(token_r, 64))
    os._exit(exit_code)


@functools.lru_cache(maxsize=1)
def _child_code() -> str:
    """The supervisor's source, sent with ``-c`` (the sandbox imports nothing of ours)."""
    return "\n".join(
        [inspect.getsource(_supervisor_main), inspect.getsource(_harness), "_supervisor_main()"]
    )


def _pythons() -> list[str]:
    """This interpreter, then the system one of the same version (readable by any uid)."""
    found = [os.path.realpath(sys.executable)]
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    system = shutil.which(version, path="/usr/local/bin:/usr/bin:/bin")
    if system and os.path.realpath(system) not in found:
        found.append(os.path.realpath(system))
    return found


@functools.lru_cache(maxsize=4)
def _binds(python: str) -> tuple[list[str], list[str]]:
    """Host paths bound read-only into the private root, and directories masked in it."""
    binds = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"]
    binds += ["/etc/ld.so.cache", "/etc/localtime"]
    out = subprocess.run(
        [python, "-I", "-S", "-c", "import sys; print('\\n'.join(sys.path))"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    masks = []
    for entry in out.stdout.split("\n"):
        real = os.path.realpath(entry) if entry else ""
        if not os.path.isdir(real):
            continue
        if not any(real == b or real.startswith(b + "/") for b in binds):
            binds.append(real)
        for name in ("site-packages", "dist-packages"):
            if os.path.isdir(os.path.join(real, name)):
                masks.append(os.path.join(real, name))
    return binds, masks


@functools.lru_cache(maxsize=1)
def _landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 where there is none."""
    if not sys.platform.startswith("linux"):
        return 0
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        # landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)
        return max(0, libc.syscall(444, None, ctypes.c_size_t(0), 1))
    except (OSError, AttributeError):
        return 0


def _cgroup_parent(
    proc_cgroup: str = "/proc/self/cgroup", mountinfo: str = "/proc/self/mountinfo"
) -> str | None:
    """A cgroup v2 directory we may create children in, with memory delegated to them.

    Our own cgroup if it is the root (exempt from "no internal processes"), else its
    parent: the usual delegation (systemd ``Delegate=yes``) has the service move
    itself into a leaf, so runs become the leaf's siblings. Needs ``memory`` and
    ``pids`` in the directory's ``cgroup.subtree_control`` and write access.
    """
    try:
        with open(proc_cgroup, encoding="utf-8") as f:
            path = next(line[3:].strip() for line in f if line.startswith("0::"))
        with open(mountinfo, encoding="utf-8") as f:
            mnt = next(line.split()[4] for line in f if " - cgroup2 " in line)
    except (OSError, StopIteration, IndexError):
        return None
    own = os.path.normpath(mnt + "/" + path)
    for folder in dict.fromkeys([own, os.path.dirname(own)]):
        if not (folder == mnt or folder.startswith(mnt.rstrip("/") + "/")):
            continue
        try:
            with open(os.path.join(folder, "cgroup.subtree_control"), encoding="utf-8") as f:
                enabled = f.read().split()
        except OSError:
            continue
        writable = os.access(folder, os.W_OK) and os.access(
            os.path.join(folder, "cgroup.procs"), os.W_OK
        )
        if {"memory", "pids"} <= set(enabled) and writable:
            return folder
    return None


def _make_cgroup(parent: str, memory_mb: int, max_processes: int) -> str:
    """Create this run's cgroup under ``parent`` with its limits; returns its path."""
    path = os.path.join(parent, f"tide_sandbox_{secrets.token_hex(6)}")
    os.mkdir(path)
    for name, value in (
        ("memory.max", str(memory_mb * 2**20)),
        ("memory.swap.max", "0"),
        ("memory.oom.group", "1"),
        ("pids.max", str(max_processes + 2)),  # + the supervisor and the monitor
    ):
        with contextlib.suppress(FileNotFoundError), open(os.path.join(path, name), "w") as f:
            f.write(value)
    return path


def _cgroup_oom_killed(path: str) -> bool:
    """Whether the kernel's OOM killer acted inside the cgroup at ``path``."""
    with contextlib.suppress(OSError), open(os.path.join(path, "memory.events")) as f:
        return any(line.split()[:1] == ["oom_kill"] and line.split()[1] != "0" for line in f)
    return False


def _remove_cgroup(path: str) -> None:
    """Kill what is left in the cgroup and remove it (retrying while it empties)."""
    kill = os.path.join(path, "cgroup.kill")  # Linux >= 5.14; the namespace is gone anyway
    if os.path.exists(kill):
        with contextlib.suppress(OSError), open(kill, "w") as f:
            f.write("1")
    for _ in range(100):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.01)
    logger.warning("sandbox: could not remove cgroup %s", path)


def _candidates() -> list[Isolation]:
    """Set-ups to try, strongest first."""
    linux = sys.platform.startswith("linux")
    root = os.geteuid() == 0
    memory = "cgroup" if linux and _cgroup_parent() else "rlimit"
    pythons = _pythons()
    found = []
    if linux:
        found.append(Isolation(True, not root, True, root, memory, pythons[0]))
    # Without a private root, a dropped uid must be able to read the standard library.
    weaker = []
    for python in pythons if root else pythons[:1]:
        if linux:
            weaker.append(Isolation(True, not root, False, root, memory, python))
        weaker.append(Isolation(False, False, False, root and linux, memory, python))
    if _landlock_abi():
        found += [Isolation(**{**i.__dict__, "landlock": _landlock_abi()}) for i in weaker]
    found += weaker
    if memory == "cgroup":
        found += [Isolation(**{**i.__dict__, "memory": "rlimit"}) for i in list(found)]
    return found


def _describe_missing(isolation: Isolation) -> tuple[str, ...]:
    missing = []
    if not isolation.namespaces:
        missing.append(
            "no namespaces (unshare refused): the program sees host processes and the "
            "network, and only the audit hook stops it from signalling or connecting"
        )
    if not isolation.private_root and isolation.landlock:
        missing.append(
            f"no private root: Landlock (ABI {isolation.landlock}) confines reads to the "
            "system and interpreter folders and writes to the run's own directory"
        )
    elif not isolation.private_root:
        missing.append(
            "no private root and no Landlock: the program can read every file its uid "
            "can read, and write any world-writable folder (the audit hook refuses "
            "writes outside its directory)"
        )
    if not isolation.unique_uid and not isolation.user_namespace:
        missing.append("runs as the evaluator's uid: no privilege drop")
    if isolation.memory != "cgroup":
        missing.append(
            "no writable cgroup v2 with the memory controller: memory is bounded by "
            "RLIMIT_NPROC x RLIMIT_AS (fewer processes, each with a share)"
        )
    return tuple(missing)


_CANARY = f"""
import collections, decimal, fractions, functools, hashlib, heapq, itertools, json, math
import random, re, statistics, string, sys, datetime
assert sys.version_info[:2] == ({sys.version_info.major}, {sys.version_info.minor})
with open("canary.txt", "w") as f:
    f.write("ok")
print(open("canary.txt").read())
"""


@functools.lru_cache(maxsize=1)
def _isolation() -> Isolation:
    failures = []
    for isolation in _candidates():
        try:
            result = _run(_CANARY, isolation, timeout=20.0, memory_mb=1024)
        except Exception as exc:  # e.g. a cgroup that cannot be created after all
            failures.append(f"{isolation}: {type(exc).__name__}: {exc}")
            continue
        if result.passed and result.stdout == "ok\n":
            full = Isolation(**{**isolation.__dict__, "missing": _describe_missing(isolation)})
            for line in full.missing:
                logger.warning("sandbox: %s", line)
            if failures:
                logger.warning("sandbox: stronger set-ups failed here: %s", "; ".join(failures))
            return full
        failures.append(f"{isolation}: {result.status} {result.detail} {result.stderr[-300:]}")
    raise RuntimeError("no sandbox set-up works on this machine:\n" + "\n".join(failures))


def sandbox_capabilities() -> Isolation:
    """The isolation :func:`check_program` uses here (probed once, then cached).

    Raises:
        RuntimeError: when no set-up works at all (then no program can be judged).
    """
    return _isolation()


def check_program(
    source: str,
    timeout: float = 10.0,
    *,
    memory_mb: int = 1024,
    max_file_mb: int = 16,
    max_disk_mb: int = 64,
    max_processes: int = 64,
    max_open_files: int = 128,
    max_output_bytes: int = 65536,
) -> ProgramResult:
    """Run ``source`` as ``__main__`` in the sandbox and judge it.

    Safe to call from several threads at once. Never raises: a sandbox that cannot
    start, or a source that is not valid text, gives a :class:`ProgramResult` too.

    Args:
        source: the complete program (solution followed by its tests).
        timeout: wall-clock seconds; the CPU limit is ``ceil(timeout)`` seconds.
        memory_mb: memory of the whole process tree (see :func:`memory_plan`).
        max_file_mb: largest file the program may write.
        max_disk_mb: size of its private ``/tmp`` (with a private root).
        max_processes: processes and threads (fewer without a cgroup).
        max_open_files: ``RLIMIT_NOFILE``.
        max_output_bytes: bytes kept of each of stdout and stderr; the rest is drained
            and dropped.

    Returns:
        The :class:`ProgramResult`.
    """
    start = time.monotonic()
    try:
        isolation = _isolation()
        return _run(
            source,
            isolation,
            timeout=timeout,
            memory_mb=memory_mb,
            max_file_mb=max_file_mb,
            max_disk_mb=max_disk_mb,
            max_processes=max_processes,
            max_open_files=max_open_files,
            max_output_bytes=max_output_bytes,
        )
    except Exception as exc:  # the promise: a verdict, whatever happened
        detail = f"sandbox failure: {type(exc).__name__}: {exc}".splitlines()[0]
        return ProgramResult("error", None, "", "", False, time.monotonic() - start, (), detail)


def _run(
    source: str,
    isolation: Isolation,
    *,
    timeout: float,
    memory_mb: int,
    max_file_mb: int = 16,
    max_disk_mb: int = 64,
    max_processes: int = 64,
    max_open_files: int = 128,
    max_output_bytes: int = 65536,
) -> ProgramResult:
    start = time.monotonic()
    try:
        program_bytes = source.encode("utf-8")
    except UnicodeEncodeError as exc:
        detail = f"the source is not valid text: {exc.reason} at character {exc.start}"
        return ProgramResult("failed", None, "", f"SyntaxError: {detail}\n", False, 0.0, (), detail)
    base = tempfile.mkdtemp(prefix="tide_sandbox_")
    cgroup = None
    try:
        os.chmod(base, 0o711)
        program = os.path.join(base, "program.py")
        workdir = os.path.join(base, "work")
        os.mkdir(workdir, 0o700)
        os.mkdir(os.path.join(base, "root"), 0o700)
        with open(program, "wb") as f:
            f.write(program_bytes)
        os.chmod(program, 0o444)
        if isolation.memory == "cgroup":
            cgroup = _make_cgroup(_cgroup_parent(), memory_mb, max_processes)
        processes, per_process_mb = memory_plan(memory_mb, max_processes, cgroup is not None)
        confined = isolation.private_root or isolation.landlock
        binds, masks = _binds(isolation.python) if confined else ([], [])
        status_r, status_w = os.pipe()
        config_r, config_w = os.pipe()
        config = {
            "status_fd": status_w,
            "program": program,
            "workdir": workdir,
            "root": os.path.join(base, "root"),
            "binds": binds,
            "masks": masks,
            "namespaces": isolation.namespaces,
            "user_namespace": isolation.user_namespace,
            "private_root": isolation.private_root,
            "landlock": isolation.landlock,
            "cgroup": cgroup,
            "uid_base": _UID_BASE,
            "cpu_s": max(1, int(-(-timeout // 1))),
            "as_bytes": per_process_mb * 2**20,
            "fsize_bytes": max_file_mb * 2**20,
            # In a user namespace the supervisor and the monitor have the program's uid.
            "nproc": processes + (2 if isolation.user_namespace else 0),
            "nofile": max_open_files,
            "tmp_bytes": max_disk_mb * 2**20,
            "tmp_inodes": 4096,
        }
        os.write(config_w, json.dumps(config).encode())
        os.close(config_w)
        argv = [isolation.python, "-I", "-S", "-c", _child_code(), str(config_r)]
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=base,
                env=env,
                pass_fds=(config_r, status_w),
                start_new_session=True,
            )
        except OSError as exc:
            return ProgramResult("error", None, "", "", False, 0.0, detail=f"cannot start: {exc}")
        finally:
            os.close(config_r)
            os.close(status_w)
        streams: dict = {"status": b""}
        try:
            streams, timed_out = _collect(proc, status_r, start + timeout, max_output_bytes)
        finally:
            os.close(status_r)
            _kill_all(proc, isolation, bytes(streams["status"]))
        oom = cgroup is not None and _cgroup_oom_killed(cgroup)
        return _verdict(streams, timed_out, oom, time.monotonic() - start)
    finally:
        if cgroup is not None:
            _remove_cgroup(cgroup)
        shutil.rmtree(base, ignore_errors=True)


def _collect(
    proc: subprocess.Popen, status_fd: int, deadline: float, cap: int
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
    grace = None
    try:
        while selector.get_map():
            now = time.monotonic()
            if grace is not None and now > grace:
                break
            remaining = deadline - now
            if remaining <= 0:
                timed_out = True
                break
            for key, _ in selector.select(min(remaining, 0.5)):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fileobj)
                    continue
                buf = kept[key.data]
                room = (1 << 20 if key.data == "status" else cap) - len(buf)
                if room < len(chunk) and key.data != "status":
                    kept["truncated"] = True
                buf += chunk[: max(room, 0)]
            if grace is None and "status" not in [k.data for k in selector.get_map().values()]:
                # The monitor has reported and gone; without a PID namespace, children
                # the program left behind may hold stdout open: stop soon after.
                grace = time.monotonic() + 0.5
    finally:
        selector.close()
    return kept, timed_out


def _kill_all(proc: subprocess.Popen, isolation: Isolation, status: bytes) -> None:
    """Kill the session, and without a PID namespace the program by pid too.

    The session id is our unreaped child's pid, so it cannot have been reused. With a
    PID namespace the monitor is its PID 1 and everything inside dies with it. Without
    one, the program (which may have left the session) is signalled by pid only while
    the monitor has not reaped it (no ``W`` line), so the pid cannot have been reused.
    """
    lines = status.decode("utf-8", "replace").splitlines()
    reaped = any(line.startswith("W ") for line in lines)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    if not reaped and not isolation.namespaces:
        for line in lines:
            if line.startswith("P ") and line[2:].isdigit():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(int(line[2:]), signal.SIGKILL)
    if isolation.unique_uid and not isolation.namespaces:
        # No PID namespace to take the program's leftovers down: as the run's own uid,
        # kill(-1) reaches exactly them (no other process has that uid).
        uid = _UID_BASE + proc.pid
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(
                [isolation.python, "-I", "-S", "-c", "import os; os.kill(-1, 9)"],
                user=uid, group=uid, extra_groups=[], env={}, timeout=10,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
    proc.wait()
    proc.stdout.close()
    proc.stderr.close()


def _verdict(streams: dict, timed_out: bool, oom: bool, duration: float) -> ProgramResult:
    lines = bytes(streams["status"]).decode("utf-8", "replace").splitlines()
    messages: dict[str, list[str]] = {}
    for line in lines:
        kind, _, value = line.partition(" ")
        messages.setdefault(kind, []).append(value)
    out = bytes(streams["stdout"]).decode("utf-8", "replace")
    err = bytes(streams["stderr"]).decode("utf-8", "replace")
    violations = tuple(messages.get("V", []))

    def result(status: str, code: int | None, detail: str) -> ProgramResult:
        truncated = bool(streams["truncated"])
        return ProgramResult(status, code, out, err, truncated, duration, violations, detail)

    if oom:
        return result("failed", None, "memory limit reached (the cgroup's OOM killer)")
    if timed_out:
        return result("timeout", None, "wall-clock limit reached")
    if "W" not in messages:
        if "E" in messages:
            return result("error", None, f"sandbox set-up failed: {messages['E'][-1]}")
        return result("error", None, "the sandbox monitor did not report")
    status_text, _, done = messages["W"][-1].partition(" ")
    wait_status = int(status_text)
    if os.WIFSIGNALED(wait_status):
        sig = os.WTERMSIG(wait_status)
        if sig in (signal.SIGXCPU, signal.SIGKILL):
            return result("timeout", -sig, f"CPU limit ({signal.Signals(sig).name})")
        return result("error", -sig, f"killed by {signal.Signals(sig).name}")
    code = os.waitstatus_to_exitcode(wait_status)
    if done == "x":
        return result("error", code, "forged completion message")
    if violations:
        return result("error", code, f"forbidden operation: {violations[0]}")
    if code == 0 and done == "1":
        return result("passed", 0, "")
    if code == 0:
        return result("failed", 0, "exited before the end of the program")
    if code == 71:
        return result("error", code, "sandbox set-up failed in the program process")
    return result("failed", code, f"exit code {code}")
