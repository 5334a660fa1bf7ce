"""jetmedia's shared runtime: config, messages, bus, storage, jobs, metrics, worker runtime."""

__version__ = "0.1.0"
