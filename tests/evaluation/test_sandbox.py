"""Hostile programs are contained and reported, and the caller carries on.

Each hostile program is followed (or accompanied) by a benign one that must still
pass, and side effects are checked from outside: files that must survive, a socket
server that must see no connection, the test process itself that must stay alive.
The ``hook_off`` tests first switch the in-process audit hook off (as issue 13 showed
a program can), then attempt each escape: the kernel layers alone must hold.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tide_lightning.evaluation import sandbox
from tide_lightning.evaluation.sandbox import (
    STATUSES,
    ProgramResult,
    check_program,
    memory_plan,
    sandbox_capabilities,
)

BENIGN = "def add(a, b):\n    return a + b\n\nassert add(2, 3) == 5\n"

# The attack of issue 13: three lines switch the audit hook off. Every test that starts
# with this checks a guarantee the kernel, not the hook, must keep. ``import ctypes``
# (refused while the hook is on) proves the hook is off.
HOOK_OFF = """
import sys
sys._getframe(1).f_locals["busy"][0] = True
import ctypes
"""

# A program claiming success without running its tests: fake status and completion
# lines on every descriptor it can find, the monitor's descriptors through /proc,
# every string in the harness's frames, then a clean early exit.
FORGE_EVERYWHERE = """
import os
fakes = [b"W 0 1\\n", b"D\\n", b"passed\\n"]
for frame_depth in range(1, 4):
    try:
        f = sys._getframe(frame_depth)
    except ValueError:
        break
    for value in list(f.f_locals.values()) + list(f.f_globals.values()):
        if isinstance(value, (bytes, str)) and len(value) < 200:
            fakes.append(value.encode() if isinstance(value, str) else value)
for fd in range(3, 256):
    for fake in fakes:
        try:
            os.write(fd, fake)
        except OSError:
            pass
for pid in ("1", "self"):
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        continue
    for name in names:
        try:
            fd = os.open(f"/proc/{pid}/fd/{name}", os.O_WRONLY | os.O_NONBLOCK)
            os.write(fd, b"W 0 1\\n")
        except OSError:
            pass
"""


def run(source: str, **kwargs) -> ProgramResult:
    result = check_program(textwrap.dedent(source), **kwargs)
    assert result.status in STATUSES
    return result


def carries_on() -> None:
    assert run(BENIGN, timeout=5).passed


def test_benign_program_passes_and_captures_output():
    result = run("print('hello')\n" + BENIGN, timeout=5)
    assert result.passed and result.status == "passed"
    assert result.stdout == "hello\n" and result.returncode == 0
    assert not result.truncated and not result.violations


def test_failing_assert_is_failed_with_traceback():
    result = run("assert 1 + 1 == 3\n", timeout=5)
    assert result.status == "failed" and result.returncode == 1
    assert "AssertionError" in result.stderr


def test_syntax_error_is_failed():
    result = run("def f(:\n", timeout=5)
    assert result.status == "failed" and "SyntaxError" in result.stderr


@pytest.mark.parametrize(
    "exit_call", ["import sys; sys.exit(0)", "import os; os._exit(0)", "raise SystemExit"]
)
def test_exit_zero_before_the_asserts_is_not_passed(exit_call):
    source = f"def f():\n    return 1\n\n{exit_call}\nassert f() == 2\n"
    result = run(source, timeout=5)
    assert result.status == "failed" and not result.passed
    assert result.returncode == 0
    carries_on()


def test_infinite_loop_times_out_quickly():
    start = time.monotonic()
    result = run("while True:\n    pass\n", timeout=1.0)
    assert result.status == "timeout" and not result.passed
    assert time.monotonic() - start < 4.0
    carries_on()


def test_sleeping_forever_hits_the_wall_clock_limit():
    result = run("import time\ntime.sleep(1000)\n", timeout=0.5)
    assert result.status == "timeout" and result.detail.startswith("wall-clock")
    carries_on()


@pytest.mark.parametrize(
    "bomb",
    [
        """
        import os
        while True:
            try:
                os.fork()
            except Exception:
                pass
        """,
        "import os\nwhile True:\n    os.fork()\n",
        "import subprocess\nsubprocess.run(['sh', '-c', ':(){ :|:& };:'])\n",
        """
        import multiprocessing
        def spin():
            while True:
                pass
        for _ in range(100):
            multiprocessing.Process(target=spin).start()
        """,
        "import os\nos.system('sh -c \"while true; do sh -c true & done\"')\n",
    ],
)
def test_fork_bomb_is_contained(bomb):
    result = run(bomb, timeout=1.5)
    assert result.status in ("error", "timeout") and not result.passed
    assert result.violations, "process creation must be refused"
    carries_on()


def test_allocating_10_gb_is_refused():
    result = run("block = bytearray(10 * 2**30)\nblock[-1] = 1\n", timeout=5, memory_mb=512)
    assert result.status == "failed" and "MemoryError" in result.stderr
    result = run("blocks = [bytearray(2**26) for _ in range(160)]\n", timeout=5, memory_mb=512)
    assert not result.passed
    carries_on()


def test_writing_outside_its_directory_is_refused(tmp_path):
    target = tmp_path / "outside.txt"
    appended = tmp_path / "existing.txt"
    appended.write_text("original")
    source = f"""
        import os
        with open({str(target)!r}, "w") as f:
            f.write("escaped")
        """
    assert not run(source, timeout=5).passed
    source = f"open({str(appended)!r}, 'a').write('tampered')\n"
    assert not run(source, timeout=5).passed
    assert not target.exists() and appended.read_text() == "original"
    # Writing inside its own directory is allowed, and the directory is fresh each time.
    ok = run(
        "assert os.listdir('.') == []\nopen('note.txt', 'w').write('x')\n".replace(
            "assert", "import os\nassert", 1
        ),
        timeout=5,
    )
    assert ok.passed, ok.stderr
    assert run("import os\nassert not os.path.exists('note.txt')\n", timeout=5).passed


def test_symlink_escape_is_refused(tmp_path):
    target = tmp_path / "victim.txt"
    target.write_text("safe")
    source = f"""
        import os
        os.symlink({str(target)!r}, "link")
        with open("link", "w") as f:
            f.write("overwritten")
        """
    assert not run(source, timeout=5).passed
    assert target.read_text() == "safe"


def test_large_file_is_refused_by_the_file_size_limit():
    source = "with open('big.bin', 'wb') as f:\n    f.write(b'0' * (32 * 2**20))\n"
    result = run(source, timeout=5, max_file_mb=4)
    assert result.status == "failed" and "File too large" in result.stderr


def test_deleting_files_is_refused(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "inner.txt").write_text("keep me too")
    for source in [
        f"import os\nos.remove({str(victim)!r})\n",
        f"import shutil\nshutil.rmtree({str(folder)!r})\n",
        f"import os\nos.rename({str(victim)!r}, 'stolen.txt')\n",
        f"import pathlib\npathlib.Path({str(victim)!r}).unlink()\n",
        f"import os\nfd = os.open({str(tmp_path)!r}, os.O_RDONLY)\nos.unlink('victim.txt', dir_fd=fd)\n",
    ]:
        result = run(source, timeout=5)
        # Refused by the audit hook, or by the kernel (not in the view, or not allowed).
        assert result.status in ("error", "failed"), source
        assert (
            result.violations
            or "PermissionError" in result.stderr
            or ("FileNotFoundError" in result.stderr)
        ), source
    assert victim.read_text() == "keep me"
    assert (folder / "inner.txt").read_text() == "keep me too"
    carries_on()


def test_opening_a_socket_is_refused():
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    try:
        source = f"""
            import socket
            s = socket.create_connection(("127.0.0.1", {port}), timeout=1)
            s.sendall(b"leak")
            """
        result = run(source, timeout=5)
        assert result.status == "error" and result.violations
        with pytest.raises(socket.timeout):
            server.accept()
    finally:
        server.close()
    result = run("import urllib.request\nurllib.request.urlopen('http://example.com')\n", timeout=5)
    assert not result.passed
    carries_on()


def test_printing_100_mb_is_capped_and_fast():
    start = time.monotonic()
    source = "import sys\nchunk = 'x' * 2**20\nfor _ in range(100):\n    sys.stdout.write(chunk)\n"
    result = run(source, timeout=20, max_output_bytes=4096)
    assert result.passed and result.truncated
    assert len(result.stdout) == 4096
    assert time.monotonic() - start < 15.0
    result = run("import sys\nsys.stderr.write('e' * 10**7)\nassert False\n", timeout=20)
    assert result.status == "failed" and result.truncated and len(result.stderr) <= 65536


def test_killing_its_parent_is_refused():
    me = os.getpid()
    for source in [
        "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n",
        f"import os, signal\nos.kill({me}, signal.SIGKILL)\n",
        "import os, signal\nos.killpg(os.getpgid(os.getppid() or 1), signal.SIGKILL)\n",
    ]:
        result = run(source, timeout=5)
        assert result.status == "error" and result.violations
    assert os.getpid() == me  # still alive
    carries_on()


def test_ctypes_and_rlimit_raising_are_refused():
    assert run("import ctypes\n", timeout=5).status == "error"
    source = "import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))\n"
    assert run(source, timeout=5).status == "error"


def test_stdin_is_empty():
    assert run("import sys\nassert sys.stdin.read() == ''\n", timeout=5).passed


def test_kernel_layers_when_available():
    caps = sandbox_capabilities()
    if caps.namespaces:
        source = """
            import os
            assert os.getpid() == 2, os.getpid()  # the monitor is PID 1
            with open("/proc/self/net/dev") as f:
                names = [line.split(":")[0].strip() for line in f.readlines()[2:]]
            assert names == ["lo"], names
            """
        result = run(source, timeout=5)
        assert result.passed, result.stderr
    if caps.unique_uid:  # uid 0 of a user namespace of its own, that host uid outside
        result = run("print(open('/proc/self/uid_map').read().split())\n", timeout=5)
        assert result.passed, result.stderr
        inside, outside, count = eval(result.stdout)
        assert inside == "0" and int(outside) >= sandbox._UID_BASE and count == "1"
    if caps.private_root:
        source = """
            import os
            assert sorted(os.listdir("/tmp")) == [] and os.getcwd() == "/tmp"
            assert not os.path.exists("/home") and not os.path.exists("/root/.bashrc")
            """
        result = run(source, timeout=5)
        assert result.passed, result.stderr
    if not (caps.namespaces or caps.unique_uid or caps.user_namespace):
        pytest.skip("no kernel-level isolation on this machine (audit hook and rlimits only)")


def test_hostile_programs_in_parallel_do_not_disturb_benign_ones():
    hostile = {
        "while True:\n    pass\n": "timeout",
        "import os\nos.fork()\n": "error",
        "x = bytearray(10 * 2**30)\n": "failed",
        "import sys\nsys.exit(0)\nassert False\n": "failed",
        "import os\nos.kill(os.getppid(), 9)\n": "error",
    }
    programs = [BENIGN] * 6 + list(hostile)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda s: check_program(s, timeout=1.5), programs))
    assert [r.status for r in results] == ["passed"] * 6 + list(hostile.values())


@pytest.mark.parametrize("layers", range(10))
def test_every_fallback_set_up_contains_the_basics(layers):
    """Machines without namespaces, a private root or root still get limits, hook, verdicts."""
    candidates = sandbox._candidates()
    if layers >= len(candidates):
        pytest.skip("set-up not available here")
    isolation = candidates[layers]
    canary = sandbox._run(sandbox._CANARY, isolation, timeout=10, memory_mb=1024)
    if not canary.passed:
        pytest.skip(f"{isolation} cannot run here: {canary.detail} {canary.stderr[-200:]}")

    def go(source: str, timeout: float = 5) -> ProgramResult:
        return sandbox._run(source, isolation, timeout=timeout, memory_mb=512)

    def expect(source: str, *statuses: str, timeout: float = 5) -> None:
        result = go(source, timeout)
        assert result.status in statuses, (source, result)

    expect(BENIGN, "passed")
    expect("import sys\nsys.exit(0)\nassert False\n", "failed")
    expect("import os\nos.fork()\n", "error")
    expect("import os\nos.kill(os.getppid(), 9)\n", "error")
    expect("x = bytearray(10 * 2**30)\n", "failed")
    expect("while True:\n    pass\n", "timeout", timeout=1.2)
    expect(HOOK_OFF + FORGE_EVERYWHERE + "assert False\n", "failed", "error")
    # Signals through a pidfd raise no audit event; they must still be unavailable.
    victim = subprocess.Popen(["sleep", "30"])
    try:
        pidfd_kill = f"""
import os, signal
fd = os.open("/proc/{victim.pid}", os.O_RDONLY)
signal.pidfd_send_signal(fd, signal.SIGKILL)
"""
        assert not go(pidfd_kill).passed
        assert go(f"import os, signal\nos.kill({victim.pid}, signal.SIGKILL)\n").status == "error"
        assert victim.poll() is None, "the sandboxed program killed an outside process"
    finally:
        victim.kill()
        victim.wait()


def hook_off_run(body: str, **kwargs) -> ProgramResult:
    """Run ``body`` after switching the audit hook off; the hook must really be off."""
    result = run(HOOK_OFF + textwrap.dedent(body), **kwargs)
    assert "import ctypes" not in result.violations, "the hook was not switched off"
    return result


def test_the_hook_can_really_be_switched_off():
    # The premise of the tests below: with the hook off, ctypes imports fine.
    assert run("import ctypes\n", timeout=5).status == "error"
    result = hook_off_run("print('off')\n", timeout=5)
    assert result.passed and result.stdout == "off\n" and not result.violations


def test_hook_off_host_process_command_lines_stay_hidden():
    caps = sandbox_capabilities()
    if not caps.namespaces:
        pytest.skip("no PID namespace here: /proc is the host's (documented)")
    secret = "tide-api-key-" + os.urandom(6).hex()
    victim = subprocess.Popen(["sh", "-c", "sleep 30", secret])
    try:
        source = """
            import os
            pids = [p for p in os.listdir("/proc") if p.isdigit()]
            text = ""
            for pid in pids:
                try:
                    text += open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")
                except OSError:
                    pass
            print(len(pids), text)
            """
        result = hook_off_run(source, timeout=5)
        assert result.passed, result.stderr
        count = int(result.stdout.split()[0])
        assert secret not in result.stdout and count <= 2, result.stdout[:500]
        assert victim.poll() is None
    finally:
        victim.kill()
        victim.wait()


def test_hook_off_files_written_do_not_outlive_the_run():
    marker = "tide-outlives-" + os.urandom(6).hex()
    source = f"""
        import os
        written = []
        for folder in ["/tmp", "/var/tmp", "/dev/shm", os.getcwd(), "/run", "/"]:
            try:
                with open(os.path.join(folder, {marker!r}), "w") as f:
                    f.write("still here")
                written.append(folder)
            except OSError:
                pass
        print(written)
        """
    result = hook_off_run(source, timeout=5)
    assert result.passed, result.stderr
    for folder in ["/tmp", "/var/tmp", "/dev/shm", "/run", "/", os.getcwd()]:
        assert not os.path.exists(os.path.join(folder, marker)), folder
    if sandbox_capabilities().private_root:
        assert result.stdout.strip() == "['/tmp', '/tmp']"  # only its own tmpfs took it
        assert run("import os\nassert os.listdir('/tmp') == []\n", timeout=5).passed


def test_hook_off_project_run_folder_and_home_are_unreadable(tmp_path):
    if not sandbox_capabilities().private_root:
        pytest.skip("no private root here: world-readable files stay readable (documented)")
    run_folder = tmp_path / "runs" / "exp"
    run_folder.mkdir(parents=True)
    (run_folder / "last.ckpt").write_bytes(b"weights")
    os.chmod(tmp_path, 0o755)
    project = Path(__file__).resolve().parents[2]
    targets = [
        run_folder / "last.ckpt",
        project / "README.md",
        project / "tide_lightning" / "evaluation" / "sandbox.py",
        Path.home() / ".bashrc",
        Path(sys.executable),
        Path("/etc/passwd"),
    ]
    source = f"""
        import os
        readable = []
        for path in {[str(t) for t in targets]!r}:
            try:
                with open(path, "rb") as f:
                    f.read(1)
                readable.append(path)
            except OSError:
                pass
        print(readable)
        print(sorted(os.listdir("/")))
        """
    result = hook_off_run(source, timeout=5)
    assert result.passed, result.stderr
    assert result.stdout.splitlines()[0] == "[]"
    top = set(eval(result.stdout.splitlines()[1]))
    stdlib_tops = {p.split("/")[1] for p in sandbox._binds(sandbox_capabilities().python)[0]}
    view = {"dev", "etc", "proc", "program.py", "tmp"} | stdlib_tops
    assert top <= view, top - view
    assert not top & {"home", "work", "var", "run", "mnt", "opt", "srv"}, top


def test_memory_plan_keeps_the_tree_within_the_limit():
    assert memory_plan(1024, 64, cgroup=False) == (4, 256)
    assert memory_plan(512, 64, cgroup=False) == (2, 256)
    assert memory_plan(100, 64, cgroup=False) == (1, 100)
    assert memory_plan(4096, 2, cgroup=False) == (2, 2048)
    assert memory_plan(1024, 64, cgroup=True) == (64, 1024)
    for memory, processes in [(1024, 64), (512, 8), (3000, 5), (100, 1)]:
        count, each = memory_plan(memory, processes, cgroup=False)
        assert count * each <= memory and count <= processes


def test_hook_off_many_processes_each_allocating_stay_within_the_limit():
    """The issue's 63 processes x 1 GB: now the tree's total stays under memory_mb."""
    memory_mb, chunk_mb = 512, 64
    source = f"""
        import os, time
        children = []
        for _ in range(40):
            try:
                pid = os.fork()
            except OSError:
                break
            if pid == 0:
                try:
                    block = bytearray({chunk_mb} * 2**20)  # zero-filled: resident
                    open(f"/tmp/ok.{{os.getpid()}}", "w").close()
                except (MemoryError, OSError):
                    os._exit(1)
                time.sleep(30)
                os._exit(0)
            children.append(pid)
        time.sleep(1.0)
        alive = [p for p in children if os.waitpid(p, os.WNOHANG) == (0, 0)]
        held = [p for p in alive if os.path.exists(f"/tmp/ok.{{p}}")]
        print(len(children), len(held) * {chunk_mb})
        """
    result = hook_off_run(source, timeout=8, memory_mb=memory_mb)
    if "memory limit" in result.detail:
        return  # a cgroup killed the whole tree: contained
    assert result.passed, (result.status, result.detail, result.stderr[-500:])
    forked, held_mb = (int(x) for x in result.stdout.split())
    assert held_mb + chunk_mb <= memory_mb, result.stdout  # + the parent's own share
    carries_on()


def test_hook_off_fork_bomb_is_contained_and_leaves_nothing():
    result = hook_off_run(
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
        timeout=1.5,
    )
    assert result.status == "timeout" and not result.passed
    if sandbox_capabilities().unique_uid:
        time.sleep(0.2)
        leftover = subprocess.run(["ps", "-eo", "uid="], capture_output=True, text=True).stdout
        assert not [u for u in leftover.split() if int(u) >= sandbox._UID_BASE]
    carries_on()


@pytest.mark.parametrize(
    "ending",
    [
        FORGE_EVERYWHERE + "os._exit(0)\n",
        "import os\nos._exit(0)\n",
        "import sys\nsys.exit(0)\n",
        "import os\nos.execv('/bin/true', ['true'])\n",
        "ctypes.CDLL(None)._exit(0)\n",
        "import os, signal\nfor sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):\n"
        "    try:\n        os.kill(1, sig)\n    except OSError:\n        pass\n",
    ],
    ids=["forge-everywhere", "os._exit", "sys.exit", "execv-true", "ctypes-_exit", "kill-pid-1"],
)
def test_hook_off_forged_completion_is_not_a_pass(ending):
    # The asserts after the ending would fail: anything but "passed" is right.
    source = HOOK_OFF + ending + "assert 1 + 1 == 3\n"
    result = run(source, timeout=5)
    assert "import ctypes" not in result.violations
    assert result.status in ("failed", "error") and not result.passed, result
    carries_on()


def test_forging_the_completion_token_is_an_error():
    result = hook_off_run(FORGE_EVERYWHERE + "assert 1 + 1 == 2\n", timeout=5)
    assert result.status == "error" and result.detail == "forged completion message"


@pytest.mark.parametrize("source", ["x = '\ud800'\n", "print('\udcff')\n", b"bytes", None])
def test_check_program_never_raises(source):
    result = check_program(source, timeout=5)
    assert result.status in ("failed", "error") and not result.passed
    if isinstance(source, str):
        assert result.status == "failed" and "surrogate" in result.detail


def test_a_broken_sandbox_is_an_error_result_not_an_exception(monkeypatch):
    monkeypatch.setattr(sandbox, "_isolation", lambda: 1 / 0)
    result = check_program(BENIGN, timeout=5)
    assert result.status == "error" and "ZeroDivisionError" in result.detail


NON_ROOT_SCRIPT = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("sb", sys.argv[1])
sb = importlib.util.module_from_spec(spec)
sys.modules["sb"] = sb
spec.loader.exec_module(sb)
hook_off, forge, secret = sys.argv[2], sys.argv[3], sys.argv[4]
caps = sb.sandbox_capabilities()
peek = "import os\\nprint([p for p in os.listdir('/proc') if p.isdigit()], os.listdir('/'))\\n"
results = {
    "caps": caps.__dict__,
    "benign": sb.check_program("assert 1 + 1 == 2\\n").status,
    "forged": sb.check_program(hook_off + forge + "import os\\nos._exit(0)\\n").status,
    "read": sb.check_program(hook_off + f"open({secret!r}).read()\\n").status,
    "peek": sb.check_program(hook_off + peek).stdout,
    "caps_left": sb.check_program(
        "print(open('/proc/self/status').read().split('CapEff:')[1].split()[0])"
    ).stdout.strip(),
}
# Where user namespaces are refused (e.g. Ubuntu 24.04), Landlock is what is left.
for isolation in sb._candidates():
    if isolation.landlock and not isolation.namespaces:
        read = hook_off + f"open({secret!r}).read()\\n"
        result = sb._run(read, isolation, timeout=5, memory_mb=512)
        results["landlock_read"] = (result.status, "PermissionError" in result.stderr)
print(json.dumps(results))
"""


def test_non_root_evaluator_gets_a_user_namespace():
    """CI runs as root; users do not. Run the module as an unprivileged uid."""
    python = shutil.which(
        f"python{sys.version_info.major}.{sys.version_info.minor}", path="/usr/bin:/bin"
    )
    if os.geteuid() != 0 or python is None or shutil.which("setpriv") is None:
        pytest.skip("needs root, setpriv and a system python to switch to an unprivileged uid")
    module = Path(sandbox.__file__).resolve()
    shared = Path(tempfile.mkdtemp(prefix="tide_sandbox_test_"))
    try:
        os.chmod(shared, 0o755)
        secret = shared / "secret.txt"  # readable by any uid on the host, not in the view
        secret.write_text("private")
        os.chmod(secret, 0o644)
        argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", python, "-I"]
        argv += ["-c", NON_ROOT_SCRIPT, str(module), HOOK_OFF, FORGE_EVERYWHERE, str(secret)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=shared)
    finally:
        shutil.rmtree(shared, ignore_errors=True)
    if done.returncode != 0 and "Permission denied" in done.stderr:
        pytest.skip("the module is not readable here by an unprivileged uid")
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.splitlines()[-1])
    assert got["benign"] == "passed"
    assert got["forged"] in ("failed", "error")
    if got["caps"]["user_namespace"]:
        assert got["caps"]["private_root"] and got["caps"]["namespaces"]
        assert got["read"] == "failed"  # the secret is not in its view
        assert "work" not in got["peek"] and "tmp" in got["peek"]
        assert got["caps_left"] == "0000000000000000"
    if "landlock_read" in got:
        assert got["landlock_read"] == ["failed", True]


def landlock_set_ups() -> list:
    found = []
    for isolation in sandbox._candidates():
        if isolation.landlock and not isolation.private_root:
            canary = sandbox._run(sandbox._CANARY, isolation, timeout=10, memory_mb=1024)
            if canary.passed:
                found.append(isolation)
    return found


def test_landlock_confines_files_where_there_is_no_private_root():
    """The fallback for machines without namespaces: Landlock, also with the hook off."""
    set_ups = landlock_set_ups()
    if not set_ups:
        pytest.skip("no Landlock here (or no set-up without a private root runs)")
    marker = "tide-landlock-" + os.urandom(6).hex()
    project_file = Path(__file__).resolve().parents[2] / "README.md"
    source = f"""
        import os, socket
        out = {{}}
        for path in [{str(project_file)!r}, "/proc/1/cmdline", "/usr/lib/os-release"]:
            try:
                open(path, "rb").read(1)
                out[path] = "read"
            except OSError as exc:
                out[path] = type(exc).__name__
        for path in ["/tmp/{marker}", "/var/tmp/{marker}", "mine.txt"]:
            try:
                open(path, "w").write("x")
                out[path] = "written"
            except OSError as exc:
                out[path] = type(exc).__name__
        print(out)
        """
    for isolation in set_ups:
        result = sandbox._run(
            HOOK_OFF + textwrap.dedent(source), isolation, timeout=5, memory_mb=512
        )
        assert result.passed, (isolation, result.stderr[-500:])
        got = eval(result.stdout)
        assert got.pop("mine.txt") == "written"
        readable = "/usr/lib/os-release"
        assert got.pop(readable) == ("read" if os.path.exists(readable) else "FileNotFoundError")
        assert set(got.values()) == {"PermissionError"}, (isolation, got)
        assert not os.path.exists(f"/tmp/{marker}") and not os.path.exists(f"/var/tmp/{marker}")


def test_cgroup_plumbing(tmp_path):
    """The cgroup v2 path (this machine has cgroup v1 memory, so run it on a fake tree)."""
    mnt = tmp_path / "cgroup"
    leaf = mnt / "service" / "main"
    leaf.mkdir(parents=True)
    for folder, controllers in [(mnt, "cpu memory pids"), (mnt / "service", "memory pids")]:
        (folder / "cgroup.subtree_control").write_text(controllers + "\n")
        (folder / "cgroup.procs").write_text("")
    (leaf / "cgroup.subtree_control").write_text("")
    proc_cgroup = tmp_path / "cgroup.txt"
    proc_cgroup.write_text("0::/service/main\n")
    mountinfo = tmp_path / "mountinfo.txt"
    mountinfo.write_text(
        f"41 31 0:38 / {mnt} rw,relatime - cgroup2 cgroup2 rw\n"
        "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n"
    )
    # The leaf has no controllers: runs become its siblings under the delegated parent.
    assert sandbox._cgroup_parent(str(proc_cgroup), str(mountinfo)) == str(mnt / "service")
    proc_cgroup.write_text("0::/\n")
    assert sandbox._cgroup_parent(str(proc_cgroup), str(mountinfo)) == str(mnt)
    (mnt / "cgroup.subtree_control").write_text("cpu\n")
    assert sandbox._cgroup_parent(str(proc_cgroup), str(mountinfo)) is None
    assert sandbox._cgroup_parent(str(tmp_path / "absent"), str(mountinfo)) is None

    path = Path(sandbox._make_cgroup(str(mnt / "service"), memory_mb=512, max_processes=8))
    assert path.parent == mnt / "service"
    assert (path / "memory.max").read_text() == str(512 * 2**20)
    assert (path / "memory.swap.max").read_text() == "0"
    assert (path / "memory.oom.group").read_text() == "1"
    assert (path / "pids.max").read_text() == "10"
    (path / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 0\n")
    assert not sandbox._cgroup_oom_killed(str(path))
    (path / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\n")
    assert sandbox._cgroup_oom_killed(str(path))
    for name in os.listdir(path):  # a real cgroup's files vanish with it
        os.remove(path / name)
    sandbox._remove_cgroup(str(path))
    assert not path.exists()


def test_cgroup_set_up_when_the_machine_has_one():
    caps = sandbox_capabilities()
    if caps.memory != "cgroup":
        pytest.skip("no delegated cgroup v2 memory controller here (the rlimit plan is used)")
    result = run("import os\nprint(open('/proc/self/cgroup').read())\n", timeout=5)
    assert result.passed and "tide_sandbox_" in result.stdout, result
    parent = sandbox._cgroup_parent()
    assert not [n for n in os.listdir(parent) if n.startswith("tide_sandbox_")]


def test_hook_off_the_evaluators_session_keyring_is_not_reachable():
    if os.uname().machine != "x86_64":
        pytest.skip("keyctl syscall number checked for x86_64 only")
    import ctypes

    # keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, create=0)
    ours = ctypes.CDLL(None).syscall(250, 0, -3, 0)
    result = hook_off_run("print(ctypes.CDLL(None).syscall(250, 0, -3, 0))\n", timeout=5)
    assert result.passed, result.stderr
    assert int(result.stdout) != ours, "the program shares the evaluator's keys"


def test_hook_off_no_capability_and_no_nested_user_namespace():
    caps = sandbox_capabilities()
    if not (caps.unique_uid or caps.user_namespace) or os.uname().machine != "x86_64":
        pytest.skip("no privilege drop to check here")
    source = """
        libc = ctypes.CDLL(None, use_errno=True)
        status = open("/proc/self/status").read()
        print(status.split("CapEff:")[1].split()[0], status.split("CapBnd:")[1].split()[0])
        print(status.split("NoNewPrivs:")[1].split()[0])
        print(libc.unshare(0x10000000), ctypes.get_errno())  # CLONE_NEWUSER
        print(libc.mount(None, b"/", None, 32, None), ctypes.get_errno())  # remount rw
        """
    result = hook_off_run(source, timeout=5)
    assert result.passed, result.stderr
    capabilities, no_new_privs, userns, remount = result.stdout.splitlines()
    effective, bounding = capabilities.split()
    assert effective == bounding == "0000000000000000" and no_new_privs == "1"
    assert userns.split()[0] == "-1" and remount.split()[0] == "-1"


def test_closing_its_own_pipes_does_not_hang_or_pass():
    start = time.monotonic()
    result = hook_off_run(
        "import os\nos.closerange(3, 64)\nimport time\ntime.sleep(1)\n", timeout=5
    )
    assert result.status == "failed" and result.detail == "exited before the end of the program"
    assert time.monotonic() - start < 4
    carries_on()


def test_without_a_pid_namespace_leftover_processes_are_killed():
    """Root without namespaces (e.g. a Docker container): the run's uid is swept instead."""
    set_ups = [
        isolation
        for isolation in sandbox._candidates()
        if isolation.unique_uid
        and not isolation.namespaces
        and sandbox._run(sandbox._CANARY, isolation, timeout=10, memory_mb=1024).passed
    ]
    if not set_ups:
        pytest.skip("needs root and a set-up without namespaces that runs here")
    source = HOOK_OFF + textwrap.dedent(
        """
        import os, time
        if os.fork() == 0:
            os.setsid()  # out of the session the parent kills
            time.sleep(60)
            os._exit(0)
        """
    )
    for isolation in set_ups:
        result = sandbox._run(source, isolation, timeout=5, memory_mb=512)
        assert result.passed, (isolation, result.stderr[-300:])
        time.sleep(0.2)
        table = subprocess.run(["ps", "-eo", "uid=,stat="], capture_output=True, text=True)
        alive = [
            line
            for line in table.stdout.splitlines()
            if int(line.split()[0]) >= sandbox._UID_BASE and not line.split()[1].startswith("Z")
        ]
        assert not alive, (isolation, alive)
