"""Prints ``tick <unix time> <seq>`` RATE times a second for SECONDS seconds.

The time is taken just before the line is written, so a reader can tell how long the
line took to reach it (every host of the test cluster shares this machine's clock).
"""

from __future__ import annotations

import argparse
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("tag")
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    start = time.monotonic()
    for seq in range(int(args.rate * args.seconds)):
        # On a schedule, not sleep(1/rate) after each line: a slow write does not lower the rate.
        delay = start + seq / args.rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        sys.stdout.write(f"tick {time.time():.6f} {seq}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
