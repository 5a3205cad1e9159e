"""Hostile programs are contained and reported, and the caller carries on.

Each hostile program is followed (or accompanied) by a benign one that must still
pass, and side effects are checked from outside: files that must survive, a socket
server that must see no connection, the test process itself that must stay alive.
"""

from __future__ import annotations

import os
import socket
import subprocess
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tide_lightning.evaluation.sandbox import (
    STATUSES,
    ProgramResult,
    check_program,
    sandbox_capabilities,
)

BENIGN = "def add(a, b):\n    return a + b\n\nassert add(2, 3) == 5\n"


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
        # Refused by the audit hook, or by the kernel when running as ``nobody``.
        assert result.status in ("error", "failed"), source
        assert result.violations or "PermissionError" in result.stderr, source
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
            assert os.getpid() == 2, os.getpid()
            with open("/proc/self/net/dev") as f:
                names = [line.split(":")[0].strip() for line in f.readlines()[2:]]
            assert names == ["lo"], names
            """
        result = run(source, timeout=5)
        assert result.passed, result.stderr
    if caps.user is not None:
        result = run(f"import os\nassert os.getuid() == {caps.user}\n", timeout=5)
        assert result.passed, result.stderr
    if caps.namespaces is False and caps.user is None:
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


@pytest.mark.parametrize("layers", [0, 1, 2, 3, 4, 5])
def test_every_fallback_set_up_contains_the_basics(layers):
    """Machines without namespaces or root still get limits, hook and verdicts."""
    from tide_lightning.evaluation import sandbox

    candidates = sandbox._candidates()
    if layers >= len(candidates):
        pytest.skip("set-up not available here")
    prefix, isolation = candidates[layers]
    if (
        isolation.user is not None
        and not sandbox._run(sandbox._CANARY, prefix, isolation, timeout=10, memory_mb=1024).passed
    ):
        pytest.skip(f"{isolation} cannot run here (interpreter unreadable after the drop)")

    def go(source: str, timeout: float = 5) -> ProgramResult:
        return sandbox._run(source, prefix, isolation, timeout=timeout, memory_mb=512)

    assert go(BENIGN).passed
    assert go("import sys\nsys.exit(0)\nassert False\n").status == "failed"
    assert go("import os\nos.fork()\n").status == "error"
    assert go("import os\nos.kill(os.getppid(), 9)\n").status == "error"
    assert go("x = bytearray(10 * 2**30)\n").status == "failed"
    assert go("while True:\n    pass\n", timeout=1.2).status == "timeout"
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
