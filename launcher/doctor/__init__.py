"""``launcher doctor``: check every host for what a launch needs, and measure how fast they are.

checks.py     every host at once: SSH, clock, software, GPUs, disk, the rendezvous (starts nothing)
bandwidth.py  ``--bandwidth``: a short collective test as a job on every host, the slow host named
passing.py    the hosts that passed: ``--write-hosts``, ``launch --preflight bandwidth``
"""
