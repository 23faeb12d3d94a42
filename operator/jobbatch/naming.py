"""Deterministic names of the objects a JobBatch owns.

The same (batch, first shard, attempt) always gives the same Job name, so creating it
twice yields AlreadyExists instead of a duplicate, and a restarted operator finds
what it made. Names include a hash of the batch UID: a batch deleted and
re-created under the same name never mistakes the old batch's Jobs for its own.
"""

from __future__ import annotations

import hashlib
import uuid

# An Indexed Job's pods get the hostname "<job>-<index>", a DNS label of at most 63 characters:
# 40 (prefix) + 1 + 5 (uid hash) + 1 + 7 (first shard) + 1 + 3 (attempt) = 58, plus "-" and a
# 4-digit index (chunks hold at most 10,000 shards) = 63.
_PREFIX_LEN = 40


def _uid_hash(uid: str) -> str:
    return hashlib.sha256(uid.encode()).hexdigest()[:5]


def _prefix(batch_name: str) -> str:
    # Batch names are DNS subdomains (dots allowed); pod hostnames are DNS labels (no dots).
    return batch_name[:_PREFIX_LEN].replace(".", "-").rstrip("-")


def job_name(batch_name: str, batch_uid: str, first_shard: int, attempt: int) -> str:
    """``<batch>-<uidhash>-<first shard>-<attempt>``: the Job running ``attempt`` of shards from ``first_shard``.

    Unique per batch: attempt 0 Jobs start at distinct shards, and a retry Job runs one shard.
    """
    return f"{_prefix(batch_name)}-{_uid_hash(batch_uid)}-{first_shard}-{attempt}"


# A piece's Job runs one pod (hostname "<job>-0"): 32 + 1 + 5 + 1 + 7 + 1 + 3 + 2 + 7 (node) + 2 = 61.
_PIECE_PREFIX_LEN = 32


def piece_job_name(batch_name: str, batch_uid: str, shard: int, attempt: int, node: int) -> str:
    """``<batch>-<uidhash>-<shard>-<attempt>-i<node>``: the Job running piece ``node`` of a shard's items.

    (retry.isolate; jobbatch.isolation numbers the pieces. Nodes stay below 2**21: shards hold at most
    1,000,000 items.)
    """
    return f"{_prefix(batch_name)[:_PIECE_PREFIX_LEN].rstrip('-')}-{_uid_hash(batch_uid)}-{shard}-{attempt}-i{node}"


def payload_configmap_name(batch_name: str, batch_uid: str) -> str:
    return f"{_prefix(batch_name)}-{_uid_hash(batch_uid)}-payloads"


def results_configmap_prefix(batch_name: str, batch_uid: str) -> str:
    """``<batch>-<uidhash>-results-``: page p of the batch's results is this followed by p."""
    return f"{_prefix(batch_name)}-{_uid_hash(batch_uid)}-results-"


def label_value(text: str) -> str:
    """A label value (<= 63 chars) that still identifies long batch names (the UID label is exact)."""
    return text if len(text) <= 63 else f"{text[:56].rstrip('-._')}-{_uid_hash(text)}"


def event_name(involved_name: str) -> str:
    """A unique Event name for an object: ``<name>.<12 hex>``, the name cut so the whole fits 253.

    (Uncut, a batch named with 241 or more characters would have every Event refused.)
    """
    return f"{involved_name[:240].rstrip('.-')}.{uuid.uuid4().hex[:12]}"
