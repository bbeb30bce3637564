"""The light job: one process per host that sleeps until it is killed.

Its only argument is a tag (the job name), so that its process is told apart on a host.
"""

from __future__ import annotations

import time

time.sleep(3600)
