"""The blocking Python API (``launcher.launch``, ``run``, ``submit``), re-exported by ``launcher``.

blocking.py       ``launch`` a script, ``run`` or ``submit`` a function
job.py            ``Job``: a launched job, driven with plain blocking calls
call_function.py  functions as jobs: the pickled call out, the ranks' outcomes back
loop.py           synchronous calls into the async library
"""
