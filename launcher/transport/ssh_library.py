"""asyncssh, imported without the warnings its dependencies emit at import time.

With today's ``cryptography`` (51), ``import asyncssh`` (2.24) emits a
``CryptographyDeprecationWarning`` about DSA five times, two lines each, on stderr: before
every message a user sees, about something the user cannot change. Every module of the
launching side imports asyncssh through :func:`asyncssh_module`, so those lines never appear;
``launcher --debug`` shows every warning again (the CLI leaves the filters alone then).
"""

from __future__ import annotations

import warnings
from types import ModuleType


def asyncssh_module() -> ModuleType:
    """The ``asyncssh`` module, its import-time warnings silenced (only at that import)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import asyncssh
    return asyncssh
