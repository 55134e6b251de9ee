import os
import sys
import time
from pathlib import Path

from agents.processes import ProcessGroup


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie still answers kill(0); read its state
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


def test_stop_kills_children_and_grandchildren(tmp_path: Path) -> None:
    code = (
        "import subprocess, sys, time, signal\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"  # a stubborn child: needs SIGKILL
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    with ProcessGroup(tmp_path, grace_s=0.5) as group:
        child = group.start("stubborn", [sys.executable, "-c", code])
        deadline = time.monotonic() + 10
        while not child.log_tail().strip() and time.monotonic() < deadline:
            time.sleep(0.05)
        grandchild = int(child.log_tail().strip())
    assert not child.alive()
    assert _gone(child.popen.pid)
    deadline = time.monotonic() + 5
    while not _gone(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(grandchild)
    group.stop()  # second stop is harmless
