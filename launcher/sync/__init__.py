"""Sync: copy a directory to every host, only what changed, on every host or on none.

run.py     the sync across hosts (``node/sync.py`` on a node)
tree.py    what "my code" is: the files a sync copies, with their hashes
send.py    a tree's content to one host, in chunks
chunks.py  the chunks, each read, hashed and encoded once for all hosts
commit.py  the last steps, and who writes a directory that hosts share (``node/sync_commit.py``)
"""
