"""The wire between the launching machine and the node agents, and the paths both sides use.

Standard library only: both sides import it, and it imports no other part of launcher and
no third-party package (``.importlinter``). Nothing here changes after import.

    base.py        the version, the job marker, the session name, a request's base and a refusal
    messages.py    the job's requests and answers: greeting, prepare, start, status, kill, wait, results
    teardown.py    ``Teardown``: how the supervisors watch each other (the supervisor's one message)
    logs.py        a line of output, and the requests that read, tail and follow
    doctor.py      the ``launcher doctor`` checkup
    stack.py       the stacks of a job's ranks (``launcher stack``): the request, a rank's frames
    sync.py        the sync's requests and answers, the manifest and its digest
    slurm.py       what a ``launcher sbatch`` task is told (no request: a command line)
    registry.py    ``REQUESTS`` and ``ANSWERS`` from each module's table (the launching side's)
    lines.py       a message <-> its line; a request's type by its op, its module imported then
    codec.py       frozen dataclasses <-> plain JSON values, checked against their type hints
    paths.py       every state directory: job records, sync cache, run directories
    private.py     directories and files no other user can read (both sides' state)
    python_env.py  which Python and which torch an interpreter runs, without importing torch
"""
