"""Which hosts a job runs on (pure: reads files and variables, contacts nothing).

files.py       hosts files and inline host lists -> ``tuple[Host, ...]``
sources.py     what ``--hosts`` names: a file, an inline list, ``localhost`` or ``slurm``
selection.py   DeepSpeed-style ``--include`` / ``--exclude``: hosts, and GPUs on them
slurm.py       a SLURM allocation's node list, expanded without scontrol
"""
