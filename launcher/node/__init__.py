"""The code that runs ON each node. It never imports the launching side of launcher.

    agent.py       ``python -m launcher.node serve``: the request loop and its dispatch table
    start.py       prepare and start a job (checks, tmux session, supervisor)
    status.py      how the job stands here
    processes.py   the job's processes: find by marker, kill, verify (psutil)
    logs.py        the log requests (read, tail, follow, wait)
    logfile.py     ``output.log``'s format, its writer and readers
    rundir.py      the job's run directory: every file in it
    tmux.py        the node's tmux server (libtmux)
    supervisor.py  what a job's tmux session runs
    teardown.py    the supervisors watch each other: one failure stops all
    failures.py    which rank failed first, how, and its traceback

Only ``launcher.protocol`` (the wire) and ``launcher._version`` are shared with the
launching side. Nothing here imports torch, asyncssh, click or rich.
"""
