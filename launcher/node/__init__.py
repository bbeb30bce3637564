"""The code that runs ON each node. It never imports the launching side of launcher.

    __main__.py         ``python -P -m launcher.node serve``: the agent's entry point
    agent.py            the request loop and its dispatch table
    errors.py           what a node answers when it cannot carry out a request
    start.py            prepare and start a job (checks, tmux session, supervisor)
    preflight.py        the checks of a prepare past the disk: GPUs and the rendezvous
    network.py          the rendezvous from here: hold its port, probe it, name the interface
    gpus.py             this node's NVIDIA GPUs and who holds them (nvidia-smi, no torch)
    nvidia_smi.py       nvidia-smi's answers read (pure): GPUs, MIG devices, processes
    status.py           how the job stands here
    processes.py        the job's processes: find by marker, kill, verify (psutil)
    logs.py             the log requests (read, tail, follow, wait)
    changes.py          a wait woken by the run directory's changes (inotify), not a poll
    logfile.py          ``output.log``'s format, its writer and readers
    rundir.py           the job's run directory: every file in it
    tmux.py             the node's tmux server (its client, argument lists)
    supervisor.py       runs the job's command, labels its lines, records how it ended
    detach.py           the supervisor forked from the agent and detached; the tmux pane shows its lines
    teardown.py         the supervisors watch each other, one failure stops all: node 0's side
    teardown_client.py  node i's side: beats, reports its failure, stops when told
    teardown_auth.py    the watchers' handshake (the job's secret) and their socket helpers
    failures.py         which rank failed first, how, and its traceback
    call_function.py    what each rank of ``launcher.run`` runs (in the job's processes, not the agent)
    results.py          the return values the ranks of ``launcher.run`` left
    stack.py            ``launcher stack`` here: every rank's stack (py-spy, or the faulthandler fallback)
    stack_frames.py     stacks read (pure): py-spy's JSON, faulthandler's text, where in user code
    nccl_dump.py        ``launcher stack --nccl`` here: each rank's NCCL flight-recorder dump, through its pipe
    hang.py             ``launch --hang-timeout``: the job's last sign of life, node 0's call, ``hung.json``
    doctor.py           ``launcher doctor`` here: what a launch needs, starting nothing
    gpu_health.py       each GPU's health from ``nvidia-smi -q``: ECC, remapped rows, clocks, links
    sync.py             a sync here: stage the new content, then all of it in place, or none
    sync_commit.py      a sync's commit, every step noted in the journal
    sync_disk.py        what a sync keeps on disk besides the tree
    sync_journal.py     a commit's undo journal, and the lock on a sync's destination
    slurm_task.py       one node of a ``launcher sbatch`` job (``python -m launcher.node.slurm_task``)

Only ``launcher.protocol`` (the wire, and the state directories) and ``launcher._version``
are shared with the launching side (``.importlinter``). The agent imports nothing of torch,
asyncssh, click or rich.
"""
