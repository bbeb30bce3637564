"""Writes sys.argv[1:] and the environment as JSON to $ECHO_ARGS_OUT (rank 0 only)."""

import json
import os
import sys

if os.environ.get("RANK", "0") == "0":
    with open(os.environ["ECHO_ARGS_OUT"], "w", encoding="utf-8") as fh:
        json.dump({"argv": sys.argv[1:], "env": dict(os.environ)}, fh)
print("echo_args: done", flush=True)
