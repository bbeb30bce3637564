"""Reaching the nodes: SSH connections, the node agent spoken to over them, and the fan-out.

connect.py      opening connections: a dead host fails fast, a slow one is waited for, bastions
agent.py        the agent client (``NodeAgent``, ``open_agent``) and ``SshOptions``
answers.py      answers matched to requests: several requests in flight on one agent
node_side.py    the agent's bootstrap: the node side installed, cached, or sent over SSH
install.py      ``launcher setup``: this launcher pip-installed into a Python on every host
fanout.py       ``for_each_host``, ``all_or_nothing``, ``ask``, ``reconnecting``
lost.py         waiting on every host of a job, but not on a host the others lost
ssh_library.py  asyncssh, imported without the warnings its dependencies emit
"""
