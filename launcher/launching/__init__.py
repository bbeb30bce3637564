"""Launching a job: what to launch, what each host runs, and the launch itself (all or nothing).

spec.py         ``LaunchSpec``: one record of what to launch, and ``make_spec``
environment.py  the job's environment: forwarded variables, env files, ``-e``
commands.py     the torchrun command line and the job's variables (pure)
plan.py         what each host will run, for a launch or a dry run (pure)
rendezvous.py   where the rendezvous goes, checked before anything starts
connect.py      before a launch prepares: connect every host, compare environments, sync
same_env.py     every host's Python and torch against this machine's
start.py        the launch: start a job on every host, or on none (``node/start.py`` on a node)
recovery.py     ``--restarts``: which host to blame, what replaces it (the policy, no I/O)
watch.py        starting a job's watcher on this machine, detached (where and why)
controller.py   the watcher: wait for an attempt's end, judge it, launch the next one
sbatch.py       the batch script that runs a launch's job under SLURM (``node/slurm_task.py``)
"""
