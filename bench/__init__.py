"""Benchmarks of ``launcher`` against the hand-rolled recipes, pdsh and the raw SSH floor.

``python -m bench`` starts the project's own test cluster (``tests/cluster.py``) at 1 to 32
hosts and measures launch, time to all ranks ready, kill, log latency and start-up. See
``docs/benchmarks.md`` for what each number means and the latest results.

``python -m bench.sync`` (its own entry point) measures ``launcher sync`` against
``rsync -a`` and ``scp -r`` per host in parallel, on hosts that share no disk.
"""
