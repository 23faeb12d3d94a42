"""Pure builders of the objects a JobBatch owns: shard attempt Jobs and the payload ConfigMap.

The worker contract lives here: the environment variables and the payload file
every shard pod gets (see ``jobbatch.worker`` for the reading side).
"""

from __future__ import annotations

import copy
from typing import Any

from jobbatch import api, isolation, naming
from jobbatch.planner import item_range, shard_count

PAYLOAD_KEY = "payloads.jsonl"
INDEX_KEY = "object-index.json"  # an objectStore source's snapshot: the object's index, not its items
PAYLOAD_DIR = "/var/run/jobbatch"
PAYLOAD_FILE = f"{PAYLOAD_DIR}/{PAYLOAD_KEY}"
INDEX_FILE = f"{PAYLOAD_DIR}/{INDEX_KEY}"
# Environment variables of an objectStore source's credentials in worker pods (from its Secret's keys).
OBJECT_STORE_ENV = {
    "JOBBATCH_OBJECT_STORE_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
    "JOBBATCH_OBJECT_STORE_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
    "JOBBATCH_OBJECT_STORE_SESSION_TOKEN": "AWS_SESSION_TOKEN",
}
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


def results_labels(name: str, uid: str) -> dict[str, str]:
    """Labels of a batch's result pages: ``kubectl get cm -l jobbatch.io/results=true,jobbatch.io/batch=NAME``."""
    return {**batch_labels(name, uid), api.LABEL_RESULTS: "true"}


def snapshot_key(payloads: api.Payloads) -> str:
    """The payload snapshot's key: the items as JSON Lines, or an object-storage source's index."""
    return INDEX_KEY if payloads.object_store is not None else PAYLOAD_KEY


def payload_configmap(name: str, namespace: str, uid: str, snapshot: str, key: str = PAYLOAD_KEY) -> dict[str, Any]:
    """An immutable snapshot of the batch's items (or object index), mounted into every shard pod."""
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
        "data": {key: snapshot},
    }


def shard_job(
    *,
    name: str,
    namespace: str,
    uid: str,
    spec: api.JobBatchSpec,
    item_count: int,
    first_shard: int,
    count: int,
    attempt: int,
    parallelism: int,
    payload_digest: str | None = None,
    node: int = 0,
) -> dict[str, Any]:
    """The Indexed Job running ``attempt`` of shards ``first_shard .. first_shard + count - 1``.

    Its pod with completion index i runs shard ``first_shard + i``. A worker's non-zero exit fails
    its index at once: the operator, not the Job controller, retries a failed shard, with the
    batch's own backoff, as a Job of its own. Disruptions (evictions, preemptions, a lost node) are
    not the worker's doing: the Job controller starts the index again, at most
    ``retry.disruptionLimit`` times (``backoffLimitPerIndex`` counts only them), so a worker that
    keeps getting evicted ends as a failed attempt instead of running forever. ``FailIndex`` (never ``FailJob``) on
    non-zero exit codes: the Job controller applies the podFailurePolicy even to a pod it
    deleted for suspension (measured on a real kubelet: SIGTERM, exit 143), and ``FailJob`` would
    then fail every shard of the Job; a failed index is only recorded for pods it did not delete.

    ``node``: a piece of shard ``first_shard``'s items (retry.isolate, ``jobbatch.isolation``), one pod
    whose items ``JOBBATCH_ITEM_START`` and ``JOBBATCH_ITEM_END`` give.
    """
    labels = {
        **batch_labels(name, uid),
        api.LABEL_FIRST_SHARD: str(first_shard),
        api.LABEL_ATTEMPT: str(attempt),
        api.LABEL_QUEUE: spec.queue_name,
    }
    if node:
        labels[api.LABEL_ITEM_NODE] = str(node)
    template = copy.deepcopy(spec.template)
    meta = template.setdefault("metadata", {})
    # A template's own item-node label would make a whole-shard pod look like a piece.
    own = {k: v for k, v in (meta.get("labels") or {}).items() if k != api.LABEL_ITEM_NODE}
    meta["labels"] = {**own, **labels}
    pod = template.setdefault("spec", {})
    pod["restartPolicy"] = "Never"
    if spec.priority_class_name:
        pod["priorityClassName"] = spec.priority_class_name
        pod.pop("priority", None)  # the admission plugin fills it from the class
    if spec.shard_timeout_seconds is not None:
        # Per pod, so it bounds each attempt of a shard, not the whole Job.
        own = pod.get("activeDeadlineSeconds")
        pod["activeDeadlineSeconds"] = min(spec.shard_timeout_seconds, own) if own else spec.shard_timeout_seconds
    env: list[dict[str, Any]] = [
        {"name": "JOBBATCH_NAME", "value": name},
        {"name": "JOBBATCH_NAMESPACE", "value": namespace},
        {"name": "JOBBATCH_FIRST_SHARD", "value": str(first_shard)},
        {"name": "JOBBATCH_ATTEMPT", "value": str(attempt)},
        {"name": "JOBBATCH_SHARD_COUNT", "value": str(shard_count(item_count, spec.shard_size))},
        {"name": "JOBBATCH_SHARD_SIZE", "value": str(spec.shard_size)},
        {"name": "JOBBATCH_ITEM_COUNT", "value": str(item_count)},
    ]
    if spec.results is not None:
        env.append({"name": "JOBBATCH_RESULT_MAX_BYTES", "value": str(spec.results.max_bytes)})
    if node:
        start, end = isolation.node_range(item_range(first_shard, spec.shard_size, item_count), node)
        env += [
            {"name": "JOBBATCH_ITEM_START", "value": str(start)},
            {"name": "JOBBATCH_ITEM_END", "value": str(end)},
        ]
    has_file = spec.payloads.count is None
    key = snapshot_key(spec.payloads)
    if spec.payloads.object_store is not None:
        env.append({"name": "JOBBATCH_PAYLOAD_INDEX", "value": INDEX_FILE})
        secret = spec.payloads.object_store.credentials_secret.name
        for var, secret_key in OBJECT_STORE_ENV.items():
            optional = secret_key == "AWS_SESSION_TOKEN"
            ref = {"name": secret, "key": secret_key, **({"optional": True} if optional else {})}
            env.append({"name": var, "valueFrom": {"secretKeyRef": ref}})
    elif has_file:
        env.append({"name": "JOBBATCH_PAYLOAD_FILE", "value": PAYLOAD_FILE})
    if has_file:
        if payload_digest:
            # The file's SHA-256 as accepted: a worker (the SDK does) refuses a file someone replaced.
            env.append({"name": "JOBBATCH_PAYLOAD_DIGEST", "value": payload_digest})
        pod["volumes"] = [
            *(pod.get("volumes") or []),
            {
                "name": PAYLOAD_VOLUME,
                "configMap": {
                    "name": naming.payload_configmap_name(name, uid),
                    "items": [{"key": key, "path": key}],
                },
            },
        ]
    # The template may not set a piece's range (nor any of ours): a pod's items are the operator's to say.
    ours = {e["name"] for e in env} | {"JOB_COMPLETION_INDEX", "JOBBATCH_TERMINATION_LOG"}
    ours |= {"JOBBATCH_ITEM_START", "JOBBATCH_ITEM_END"}
    for container in [*pod.get("initContainers", []), *pod.get("containers", [])]:
        container["env"] = [*(e for e in container.get("env") or [] if e.get("name") not in ours), *env]
        # A worker that fails without writing /dev/termination-log still says why: its log's tail
        # becomes the message recorded in status.failures.
        container.setdefault("terminationMessagePolicy", "FallbackToLogsOnError")
        # Where the SDK writes a SkipRetry (the template may have moved it).
        path = container.get("terminationMessagePath") or "/dev/termination-log"
        container["env"] = [*container["env"], {"name": "JOBBATCH_TERMINATION_LOG", "value": path}]
        if has_file:
            mount = {"name": PAYLOAD_VOLUME, "mountPath": PAYLOAD_DIR, "readOnly": True}
            container["volumeMounts"] = [*(container.get("volumeMounts") or []), mount]
    job_spec: dict[str, Any] = {
        "completionMode": "Indexed",
        "completions": count,
        "parallelism": parallelism,
        # Only failures no rule below decides count against it: disruptions, and the rare pod that
        # fails with no container exit code (refused by its kubelet, say).
        "backoffLimitPerIndex": spec.retry.disruption_limit,
        "podFailurePolicy": {
            "rules": [
                # Evictions and preemptions are not the worker's fault: the index gets a new pod, a
                # bounded number of times (an `Ignore` would rerun a pod that keeps causing node
                # memory pressure forever).
                {"action": "Count", "onPodConditions": [{"type": "DisruptionTarget"}]},
                # Any other non-zero exit fails the index (the shard's attempt) at once.
                {"action": "FailIndex", "onExitCodes": {"operator": "NotIn", "values": [0]}},
            ]
        },
        "template": template,
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": naming.piece_job_name(name, uid, first_shard, attempt, node)
            if node
            else naming.job_name(name, uid, first_shard, attempt),
            "namespace": namespace,
            "labels": labels,
            "finalizers": [api.SHARD_FINALIZER],
            "ownerReferences": [owner_reference(name, uid)],
        },
        "spec": job_spec,
    }
