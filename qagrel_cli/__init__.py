"""qagrel: reproduce Table 1 of the Q-AGREL paper (Pozzi, Bohte & Roelfsema)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("qagrel")
except PackageNotFoundError:  # running from a source tree on PYTHONPATH
    __version__ = "0.1.0"
