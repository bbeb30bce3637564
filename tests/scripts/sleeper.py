"""A long-running rank that is hard to kill: ignores SIGTERM and leaves a setsid grandchild."""

import os
import signal
import subprocess
import sys
import time

signal.signal(signal.SIGTERM, signal.SIG_IGN)
# A grandchild in its own session, outside the tmux session's process group.
subprocess.Popen(
    [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(3600)"],
    start_new_session=True,
)
rank = os.environ.get("RANK", "?")
for tick in range(100000):
    print(f"sleeper rank={rank} tick={tick}", flush=True)
    time.sleep(0.5)
