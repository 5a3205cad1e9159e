"""Screenshots of TensorBoard for a run folder, with headless Chromium (no display needed).

    python tools/tensorboard_screenshots.py runs/demo docs/figures/tensorboard

starts ``tensorboard --logdir RUN`` on a free local port, waits until it answers, and
saves one PNG per dashboard (scalars, images, hparams) into OUT with Debian's
``chromium --headless --screenshot``. Only for documentation: nothing in the tests needs
it. Chromium: ``apt-get install chromium``.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

DASHBOARDS = {
    "scalars": "#scalars&tagFilter=val",  # every validation point, training and validate runs
    "images": "#images&tagFilter=kl_vs_t",  # the labelled KL-versus-t figure
    "hparams": "#hparams",
}
"""Screenshot name -> TensorBoard URL fragment (dashboard and tag filter)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"error: TensorBoard did not answer at {url} within {seconds:.0f} s")


def screenshot(chromium: str, url: str, out: Path, size: str, wait_ms: int) -> None:
    """One headless Chromium screenshot of ``url`` into ``out``."""
    subprocess.run(
        [
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--window-size={size}", f"--virtual-time-budget={wait_ms}",
            f"--screenshot={out}", url,
        ],
        check=True, capture_output=True, timeout=180,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logdir", help="a run folder (or a folder of runs)")
    parser.add_argument("out", help="where the PNG files go")
    parser.add_argument("--size", default="1600,1400", help="window width,height")
    parser.add_argument("--wait-ms", type=int, default=15000, help="page time before the shot")
    args = parser.parse_args(argv)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("error: chromium not found: apt-get install chromium")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    board = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", args.logdir,
         "--port", str(port), "--host", "127.0.0.1", "--reload_interval", "0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}/"
        _wait(base, 120)
        for name, fragment in DASHBOARDS.items():
            path = out / f"tensorboard_{name}.png"
            screenshot(chromium, base + fragment, path, args.size, args.wait_ms)
            print(f"wrote {path}")
    finally:
        board.terminate()
        board.wait(timeout=30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
