"""Rank 1 dies by SIGKILL, as under the kernel's OOM killer; the others finish."""

import os
import signal
import time

if os.environ["RANK"] == "1":
    os.kill(os.getpid(), signal.SIGKILL)
time.sleep(2)
