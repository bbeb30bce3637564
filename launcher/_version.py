"""The version of launcher, read by both sides (``node/agent.py`` greets with it) and by setup.cfg."""

__version__ = "0.2.0"
