"""Deterministic names of the objects a JobBatch owns.

The same (batch, shard, attempt) always gives the same Job name, so creating it
twice yields AlreadyExists instead of a duplicate, and a restarted operator finds
what it made. Names include a hash of the batch UID: a batch deleted and
re-created under the same name never mistakes the old batch's Jobs for its own.
"""

from __future__ import annotations

import hashlib

# Job names must stay <= 63 characters (they become pod label values).
_PREFIX_LEN = 40


def _uid_hash(uid: str) -> str:
    return hashlib.sha256(uid.encode()).hexdigest()[:5]


def _prefix(batch_name: str) -> str:
    return batch_name[:_PREFIX_LEN].rstrip("-.")


def job_name(batch_name: str, batch_uid: str, shard: int, attempt: int) -> str:
    """``<batch>-<uidhash>-<shard>-<attempt>``: at most 40 + 1 + 5 + 1 + 7 + 1 + 3 = 58 characters."""
    return f"{_prefix(batch_name)}-{_uid_hash(batch_uid)}-{shard}-{attempt}"


def payload_configmap_name(batch_name: str, batch_uid: str) -> str:
    return f"{_prefix(batch_name)}-{_uid_hash(batch_uid)}-payloads"


def label_value(text: str) -> str:
    """A label value (<= 63 chars) that still identifies long batch names (the UID label is exact)."""
    return text if len(text) <= 63 else f"{text[:56].rstrip('-._')}-{_uid_hash(text)}"
