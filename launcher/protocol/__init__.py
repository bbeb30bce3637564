"""The wire between the launching machine and the node agents: standard library only.

Both sides import it; it imports no other part of launcher and no third-party package.

    messages.py    every request and answer of the agent, typed, and the tables that name them
    doctor.py      the ``launcher doctor`` messages
    sync.py        the sync messages, the manifest and its digest
    slurm.py       what a ``launcher sbatch`` task is told
    codec.py       frozen dataclasses <-> plain JSON values, checked against their type hints
    private.py     directories and files no other user can read (both sides' state)
    python_env.py  which Python and which torch an interpreter runs, without importing torch
"""
