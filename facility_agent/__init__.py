"""facility-agent: keeps a server room alive through power and network trouble."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("facility-agent")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
