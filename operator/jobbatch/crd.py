"""Generate the JobBatch CustomResourceDefinition from the pydantic models in ``jobbatch.api``.

``python -m jobbatch.crd [PLURAL]`` prints one (jobbatches, cronjobbatches); ``crds/`` holds the
committed copies, and ``python -m jobbatch.crd --chart PLURAL`` the chart's templates of them (behind
``crds.install``, kept on uninstall). A unit test fails when any drifts (regenerate with ``make crds``).

pydantic emits JSON Schema with ``$ref``s, ``anyOf: [X, null]`` for optionals and
``additionalProperties``; Kubernetes needs a *structural* schema, so this module
inlines references, collapses optionals and drops what structural schemas forbid.
"""

from __future__ import annotations

import copy
import json
import sys
from typing import Any

import yaml

from jobbatch import api

# The worker pod template: checked for shape, everything else left to the Pod API.
_TEMPLATE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["spec"],
    "properties": {
        "metadata": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        "spec": {
            "type": "object",
            "required": ["containers"],
            "x-kubernetes-preserve-unknown-fields": True,
            "properties": {
                "containers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                },
            },
        },
    },
}

_DROP = {"title", "additionalProperties", "$defs", "discriminator"}


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_resolve(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "$ref" in node:
        target = copy.deepcopy(defs[node.pop("$ref").rsplit("/", 1)[-1]])
        rules = target.get("x-kubernetes-validations", []) + node.get("x-kubernetes-validations", [])
        node = {**target, **node}  # field-level keys (description, default) win...
        if rules:  # ...but CEL rules of the type and of the field both apply
            node["x-kubernetes-validations"] = rules
    if "anyOf" in node:
        branches = [b for b in node.pop("anyOf") if b.get("type") != "null"]
        if len(branches) != 1:
            raise ValueError(f"cannot express anyOf {branches} structurally")
        node = {**_resolve(branches[0], defs), **node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "properties":
            out[key] = {name: _resolve(sub, defs) for name, sub in value.items()}
        elif key in ("items", "not"):
            out[key] = _resolve(value, defs)
        else:
            out[key] = value
    if out.get("default") is None:
        out.pop("default", None)
    if not out.get("type") and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["x-kubernetes-preserve-unknown-fields"] = True  # `Any`: any JSON value
    if out.get("type") == "object" and "properties" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


def _schema_of(model: type[api._Model]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return dict(_resolve(raw, raw.get("$defs", {})))


def _job_batch_spec() -> dict[str, Any]:
    spec = _schema_of(api.JobBatchSpec)
    validations = spec["properties"]["template"].get("x-kubernetes-validations", [])
    spec["properties"]["template"] = {
        **_TEMPLATE_SCHEMA,
        "description": spec["properties"]["template"]["description"],
        "x-kubernetes-validations": [v for v in validations if v["rule"] == "self == oldSelf"],
    }
    # Nested objects whose fields all have defaults get `default: {}` so the API
    # server fills them in (kubectl get -o yaml shows the effective retry policy).
    for name in ("retry",):
        spec["properties"][name]["default"] = {}
    spec["properties"]["retry"]["properties"]["backoff"]["default"] = {}
    return spec


def _object(model: type[api._Model], spec: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "description": model.__doc__,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }


def openapi_schema() -> dict[str, Any]:
    """The structural schema of a JobBatch object."""
    return _object(api.JobBatch, _job_batch_spec(), _schema_of(api.JobBatchStatus))


def _mutable(node: Any) -> Any:
    """``node`` without transition rules (``oldSelf``): a CronJobBatch's template may change at any time."""
    if isinstance(node, list):
        return [_mutable(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _mutable(v) for k, v in node.items()}
    if "x-kubernetes-validations" in out:
        rules = [r for r in out.pop("x-kubernetes-validations") if "oldSelf" not in r["rule"]]
        if rules:
            out["x-kubernetes-validations"] = rules
    return out


def cron_openapi_schema() -> dict[str, Any]:
    """The structural schema of a CronJobBatch object: its template holds a whole JobBatch spec."""
    spec = _schema_of(api.CronJobBatchSpec)
    template = spec["properties"]["jobBatchTemplate"]["properties"]
    template["spec"] = {**_mutable(_job_batch_spec()), "description": "Spec of every JobBatch created."}
    schema = _object(api.CronJobBatch, spec, _schema_of(api.CronJobBatchStatus))
    # Its batches are named <name>-<8 digits>, and a batch's name must stay a valid label value (63).
    rule = f"self.metadata.name.size() <= {api.MAX_CRON_NAME}"
    schema["x-kubernetes-validations"] = [{"rule": rule, "message": f"name must be at most {api.MAX_CRON_NAME} chars"}]
    return schema


PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Done", "type": "string", "jsonPath": ".status.progress", "description": "finished/total shards"},
    {"name": "Running", "type": "integer", "jsonPath": ".status.shards.running"},
    {"name": "Failed", "type": "integer", "jsonPath": ".status.shards.failed"},
    {"name": "Priority", "type": "string", "jsonPath": ".spec.priorityClassName"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {"name": "Queue", "type": "string", "jsonPath": ".spec.queueName", "priority": 1},
]


CRON_PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Schedule", "type": "string", "jsonPath": ".spec.schedule"},
    {"name": "Timezone", "type": "string", "jsonPath": ".spec.timeZone"},
    {"name": "Suspend", "type": "boolean", "jsonPath": ".spec.suspend"},
    {"name": "Active", "type": "integer", "jsonPath": ".status.activeCount"},
    {"name": "Last Schedule", "type": "date", "jsonPath": ".status.lastScheduleTime"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


QUEUE_PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Weight", "type": "integer", "jsonPath": ".spec.weight"},
    {"name": "Max", "type": "integer", "jsonPath": ".spec.maxRunningShards"},
    {"name": "Share", "type": "integer", "jsonPath": ".status.fairShare", "description": "entitled running shards"},
    {"name": "Running", "type": "integer", "jsonPath": ".status.runningShards"},
    {"name": "Waiting", "type": "integer", "jsonPath": ".status.waitingShards"},
    {"name": "Admitted", "type": "integer", "jsonPath": ".status.admittedBatches"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def _definition(
    *,
    kind: str,
    plural: str,
    singular: str,
    short_names: list[str],
    version: dict[str, Any],
    scope: str = "Namespaced",
) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{api.GROUP}"},
        "spec": {
            "group": api.GROUP,
            "scope": scope,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": singular,
                "shortNames": short_names,
                "categories": ["all"],
            },
            "versions": [{"name": api.VERSION, "served": True, "storage": True, **version}],
        },
    }


def crd() -> dict[str, Any]:
    return _definition(
        kind=api.KIND,
        plural=api.PLURAL,
        singular=api.SINGULAR,
        short_names=api.SHORT_NAMES,
        version={
            # `kubectl scale jobbatch NAME --replicas N` sets spec.parallelism (no labelSelectorPath:
            # an HPA cannot target it; scaling down stops running attempts, so none should).
            "subresources": {
                "status": {},
                "scale": {"specReplicasPath": ".spec.parallelism", "statusReplicasPath": ".status.shards.running"},
            },
            "additionalPrinterColumns": PRINTER_COLUMNS,
            "schema": {"openAPIV3Schema": openapi_schema()},
        },
    )


def cron_crd() -> dict[str, Any]:
    return _definition(
        kind=api.CRON_KIND,
        plural=api.CRON_PLURAL,
        singular=api.CRON_SINGULAR,
        short_names=api.CRON_SHORT_NAMES,
        version={
            "subresources": {"status": {}},
            "additionalPrinterColumns": CRON_PRINTER_COLUMNS,
            "schema": {"openAPIV3Schema": cron_openapi_schema()},
        },
    )


def queue_openapi_schema() -> dict[str, Any]:
    """The structural schema of a BatchQueue: spec optional (all defaults), name a DNS label (queueName's form)."""
    spec, status = _schema_of(api.BatchQueueSpec), _schema_of(api.BatchQueueStatus)
    schema = _object(api.BatchQueue, {**spec, "default": {}}, status)
    del schema["required"]
    rule = f"self.metadata.name.size() <= 63 && self.metadata.name.matches('{api.DNS_LABEL}')"
    schema["x-kubernetes-validations"] = [{"rule": rule, "message": "name must be a DNS label (what queueName holds)"}]
    return schema


def queue_crd() -> dict[str, Any]:
    return _definition(
        kind=api.QUEUE_KIND,
        plural=api.QUEUE_PLURAL,
        singular=api.QUEUE_SINGULAR,
        short_names=api.QUEUE_SHORT_NAMES,
        scope="Cluster",
        version={
            "subresources": {"status": {}},
            "additionalPrinterColumns": QUEUE_PRINTER_COLUMNS,
            "schema": {"openAPIV3Schema": queue_openapi_schema()},
        },
    )


# The CRDs by plural: crds/jobbatch.io_<plural>.yaml and the chart's templates/crd-<plural>.yaml.
CRDS = {api.PLURAL: crd, api.CRON_PLURAL: cron_crd, api.QUEUE_PLURAL: queue_crd}


def _dump(obj: dict[str, Any]) -> str:
    return yaml.safe_dump(json.loads(json.dumps(obj)), sort_keys=False, width=120)


def render(plural: str = api.PLURAL) -> str:
    header = f"# Generated by `python -m jobbatch.crd {plural}` from operator/jobbatch/api.py. Do not edit.\n"
    return header + _dump(CRDS[plural]())


def render_chart_template(plural: str = api.PLURAL) -> str:
    """The CRD as a chart template, so `helm upgrade` upgrades it (Helm never upgrades a chart's `crds/`).

    `helm.sh/resource-policy: keep` leaves it, and so every JobBatch, in place on `helm uninstall`;
    `crds.install=false` leaves it to whoever manages CRDs (GitOps, `kubectl apply -f crds/`).
    """
    body = CRDS[plural]()
    metadata = {"name": body["metadata"]["name"], "annotations": {"helm.sh/resource-policy": "keep"}}
    head = _dump({"apiVersion": body["apiVersion"], "kind": body["kind"], "metadata": metadata})
    spec = _dump({"spec": body["spec"]})
    if "{{" in head + spec:  # Helm would read it as a template action
        raise ValueError("the CRD holds '{{': escape it before templating")
    return (
        f"{{{{- /* Generated by `python -m jobbatch.crd --chart {plural}` from operator/jobbatch/api.py. "
        "Do not edit. */}}\n"
        # `dig`: a `helm upgrade --reuse-values` from chart 0.1.0 brings values without `crds`.
        '{{- if dig "crds" "install" true .Values.AsMap }}\n'
        + head
        + '  labels:\n    {{- include "jobbatch.labels" . | nindent 4 }}\n'
        + spec
        + "{{- end }}\n"
    )


def main(argv: list[str]) -> None:
    """``python -m jobbatch.crd [--chart] [PLURAL]``: a CRD, or the chart's template of it."""
    chart = "--chart" in argv
    plurals = [a for a in argv if a != "--chart"] or [api.PLURAL]
    sys.stdout.write((render_chart_template if chart else render)(*plurals))


if __name__ == "__main__":
    main(sys.argv[1:])
