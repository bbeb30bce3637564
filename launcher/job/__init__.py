"""A launched job: its record, how it stands, its logs, its end (best effort per host).

records.py  the local record of launched jobs, found by name
status.py   status and wait on every host (``node/status.py`` on a node)
logs.py     what a job printed, read once or followed (``node/logs.py``)
flight_recorder.py  ``stack --nccl``: the ranks' NCCL flight-recorder dumps read by torch's analyzer
stack.py    where every rank is: stacks on every host, as a roll-call (``node/stack.py``)
kill.py     end a job on every host and verify it there (``node/processes.py``)
result.py   how a job ended (``JobResult``) and the ``JobFailed`` a failure raises
slurm.py    talking to SLURM: sbatch, scontrol, scancel
watcher.py  the watcher of a job launched with ``--restarts``, seen from here: alive, stopped, its attempts
"""
