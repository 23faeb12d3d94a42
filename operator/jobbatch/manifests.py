"""Pure builders of the objects a JobBatch owns: shard attempt Jobs and the payload ConfigMap.

The worker contract lives here: the environment variables and the payload file
every shard pod gets (see ``jobbatch.worker`` for the reading side).
"""

from __future__ import annotations

import copy
from typing import Any

from jobbatch import api, naming
from jobbatch.planner import item_range, shard_count

PAYLOAD_KEY = "payloads.jsonl"
PAYLOAD_DIR = "/var/run/jobbatch"
PAYLOAD_FILE = f"{PAYLOAD_DIR}/{PAYLOAD_KEY}"
PAYLOAD_VOLUME = "jobbatch-payloads"
# A ConfigMap holds at most 1 MiB; keep room for metadata.
MAX_PAYLOAD_BYTES = 1_000_000


def owner_reference(name: str, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def batch_labels(name: str, uid: str) -> dict[str, str]:
    return {api.LABEL_BATCH: naming.label_value(name), api.LABEL_BATCH_UID: uid}


def payload_configmap(name: str, namespace: str, uid: str, jsonl: str) -> dict[str, Any]:
    """An immutable snapshot of the batch's items, mounted into every shard pod."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": naming.payload_configmap_name(name, uid),
            "namespace": namespace,
            "labels": batch_labels(name, uid),
            "ownerReferences": [owner_reference(name, uid)],
        },
        "immutable": True,
        "data": {PAYLOAD_KEY: jsonl},
    }


def shard_job(
    *,
    name: str,
    namespace: str,
    uid: str,
    spec: api.JobBatchSpec,
    item_count: int,
    shard: int,
    attempt: int,
) -> dict[str, Any]:
    """The batch/v1 Job running one attempt of one shard."""
    labels = {
        **batch_labels(name, uid),
        api.LABEL_SHARD: str(shard),
        api.LABEL_ATTEMPT: str(attempt),
    }
    template = copy.deepcopy(spec.template)
    meta = template.setdefault("metadata", {})
    meta["labels"] = {**(meta.get("labels") or {}), **labels}
    pod = template.setdefault("spec", {})
    pod["restartPolicy"] = "Never"
    if spec.priority_class_name:
        pod["priorityClassName"] = spec.priority_class_name
        pod.pop("priority", None)  # the admission plugin fills it from the class
    start, end = item_range(shard, spec.shard_size, item_count)
    env = [
        {"name": "JOBBATCH_NAME", "value": name},
        {"name": "JOBBATCH_NAMESPACE", "value": namespace},
        {"name": "JOBBATCH_SHARD", "value": str(shard)},
        {"name": "JOBBATCH_SHARD_COUNT", "value": str(shard_count(item_count, spec.shard_size))},
        {"name": "JOBBATCH_ATTEMPT", "value": str(attempt)},
        {"name": "JOBBATCH_ITEM_START", "value": str(start)},
        {"name": "JOBBATCH_ITEM_END", "value": str(end)},
    ]
    has_file = spec.payloads.count is None
    if has_file:
        env.append({"name": "JOBBATCH_PAYLOAD_FILE", "value": PAYLOAD_FILE})
        pod["volumes"] = [
            *(pod.get("volumes") or []),
            {
                "name": PAYLOAD_VOLUME,
                "configMap": {
                    "name": naming.payload_configmap_name(name, uid),
                    "items": [{"key": PAYLOAD_KEY, "path": PAYLOAD_KEY}],
                },
            },
        ]
    ours = {e["name"] for e in env}
    for container in [*pod.get("initContainers", []), *pod.get("containers", [])]:
        container["env"] = [*(e for e in container.get("env") or [] if e.get("name") not in ours), *env]
        if has_file:
            mount = {"name": PAYLOAD_VOLUME, "mountPath": PAYLOAD_DIR, "readOnly": True}
            container["volumeMounts"] = [*(container.get("volumeMounts") or []), mount]
    job_spec: dict[str, Any] = {
        "backoffLimit": 0,
        "completions": 1,
        "parallelism": 1,
        "podFailurePolicy": {
            "rules": [
                # Evictions and preemptions are not the worker's fault: the Job makes a new pod.
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                # Any other non-zero exit fails the Job at once, naming the exit code in its condition.
                {"action": "FailJob", "onExitCodes": {"operator": "NotIn", "values": [0]}},
            ]
        },
        "template": template,
    }
    if spec.shard_timeout_seconds is not None:
        job_spec["activeDeadlineSeconds"] = spec.shard_timeout_seconds
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": naming.job_name(name, uid, shard, attempt),
            "namespace": namespace,
            "labels": labels,
            "finalizers": [api.SHARD_FINALIZER],
            "ownerReferences": [owner_reference(name, uid)],
        },
        "spec": job_spec,
    }
