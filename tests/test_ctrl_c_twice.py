"""Ctrl-C twice stops at once: the second SIGINT skips the SIGTERM grace and kills the group."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

DRIVER = r"""
import sys, pathlib
from autoresearch.run.process import run_script
work = pathlib.Path(sys.argv[1])
script = work / "train.py"
script.write_text(
    "import signal, subprocess, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *a: None)\n"  # ignores SIGTERM: only SIGKILL stops it
    "print('progress step=1 pct=1.0', flush=True)\n"
    "time.sleep(120)\n"
)
r = run_script(script, cwd=work, log_path=work / "run.log", kill_after=60, grace=20)
print("STATUS", r.status, flush=True)
"""


def test_second_ctrl_c_kills_without_waiting_for_the_grace(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        log = tmp_path / "run.log"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (log.exists() and "progress" in log.read_text(errors="replace")):
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.5)  # now inside the 20 s grace: the script ignored SIGTERM
        assert proc.poll() is None
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=15)
        assert time.monotonic() - t0 < 5, "the second Ctrl-C waited for the grace period"
        assert "STATUS interrupted" in out
    finally:
        if proc.poll() is None:
            proc.kill()
