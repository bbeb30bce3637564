"""Prints numbered lines fast, for checking that followers lose and repeat nothing."""

import os
import sys
import time

count = int(os.environ.get("TICKS", "200"))
for tick in range(count):
    print(f"ticker tick={tick}", flush=True)
    time.sleep(float(os.environ.get("TICK_EVERY", "0.1")))
print("ticker done", file=sys.stderr, flush=True)
