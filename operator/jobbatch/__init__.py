"""jobbatch: a Kubernetes operator that runs a list of payloads as sharded worker Jobs."""

__version__ = "0.1.0"
