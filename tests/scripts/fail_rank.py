"""Exits with status 3 on the rank named by FAIL_RANK (default 1); others finish normally."""

import os
import sys
import time

rank = int(os.environ["RANK"])
if rank == int(os.environ.get("FAIL_RANK", "1")):
    print(f"fail_rank: rank {rank} failing on purpose", file=sys.stderr, flush=True)
    raise SystemExit(3)
time.sleep(1)
print(f"fail_rank: rank {rank} done", flush=True)
