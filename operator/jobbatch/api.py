"""JobBatch v1alpha1 API types: the one source of the CRD schema (see ``jobbatch.crd``).

Field names are the public contract. Descriptions here become ``kubectl explain``
text; bounds, defaults and CEL rules (``x-kubernetes-validations``) become the
API server's validation, so bad input is rejected before the operator sees it.
"""

from __future__ import annotations

import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from jobbatch.worker import MAX_RESULT_BYTES as MAX_RESULT_BYTES
from jobbatch.worker import PROGRESS_PREFIX as PROGRESS_PREFIX
from jobbatch.worker import RESULT_PREFIX as RESULT_PREFIX
from jobbatch.worker import SKIP_RETRY_PREFIX as SKIP_RETRY_PREFIX

GROUP = "jobbatch.io"
VERSION = "v1alpha1"
KIND = "JobBatch"
PLURAL = "jobbatches"
SINGULAR = "jobbatch"
SHORT_NAMES = ["jb"]
API_VERSION = f"{GROUP}/{VERSION}"

# A worker's termination message starting with SKIP_RETRY_PREFIX fails its shard for good, whatever the
# retry limit; a succeeded pod's starting with RESULT_PREFIX holds its shard's result. The worker
# contract owns both (the SDK writes them; any worker can: a line in /dev/termination-log), imported
# above so the operator's modules read them from the API.

# Labels and finalizers the operator puts on the objects it owns.
LABEL_BATCH = "jobbatch.io/batch"
LABEL_BATCH_UID = "jobbatch.io/batch-uid"
# On the ConfigMaps holding a batch's shard results ("true"), beside the two labels above.
LABEL_RESULTS = "jobbatch.io/results"
# On shard Jobs and their pods: the Job runs attempt ATTEMPT of shards FIRST .. FIRST + completions - 1.
LABEL_FIRST_SHARD = "jobbatch.io/first-shard"
LABEL_ATTEMPT = "jobbatch.io/attempt"
# On a Job (and its pod) running a piece of a shard's items (retry.isolate): the piece's node number.
LABEL_ITEM_NODE = "jobbatch.io/item-node"
# Set by Kubernetes on every pod of an Indexed Job; a pod's shard is first-shard + this index.
LABEL_COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
# Keeps a shard Job (and its outcome) until the JobBatch status has recorded it.
SHARD_FINALIZER = "jobbatch.io/shard-record"
# kopf's own, on every JobBatch: its daemon stops before the batch goes.
KOPF_FINALIZER = "jobbatch.io/kopf-finalizer"
# On the RoleBinding that lets a namespace-scoped operator into a watched namespace, while anything
# there holds one of the two finalizers above (jobbatch.access).
ACCESS_FINALIZER = "jobbatch.io/namespace-access"

# On shard Jobs: the batch's queue when the Job was made. Only read for a batch whose reconciler has not
# reported yet (just after a restart), to count its running shards against the right queue's caps.
LABEL_QUEUE = "jobbatch.io/queue"
DEFAULT_QUEUE = "default"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"

Phase = Literal["Pending", "Running", "Suspended", "Succeeded", "Failed"]
TERMINAL_PHASES: frozenset[str] = frozenset({"Succeeded", "Failed"})


def _extra(**schema: Any) -> dict[str, Any]:
    return schema


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    def dump(self) -> dict[str, Any]:
        """The Kubernetes (camelCase) form, without unset optional fields."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class ConfigMapSource(_Model):
    """A ConfigMap key holding JSON Lines: one payload item per line."""

    name: str = Field(min_length=1, max_length=253, description="ConfigMap name, in the JobBatch's namespace.")
    key: str = Field(min_length=1, max_length=253, description="Key whose value holds the JSON Lines.")


class SecretReference(_Model):
    """A Secret in the JobBatch's namespace."""

    name: str = Field(min_length=1, max_length=253, description="Secret name.")


class ObjectStoreSource(_Model):
    """One object in S3-compatible storage holding the items as JSON Lines or CSV, of any size.

    The operator reads it once, in 1 MiB ranges, to count its records and note where each shard's
    first record starts (never holding more than a range and a record); each worker then reads only
    its own shard's bytes, of that same object version (its ETag).
    """

    endpoint: str = Field(
        max_length=2048,
        pattern=r"^https?://[A-Za-z0-9.:\[\]-]+(/[A-Za-z0-9._~/%-]*)?$",
        description="The S3 endpoint URL (path-style requests), e.g. https://s3.eu-west-1.amazonaws.com or "
        "http://minio.storage.svc:9000. Both the operator and the worker pods must reach it.",
    )
    bucket: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", description="Bucket name (S3's naming rules).")
    key: str = Field(min_length=1, max_length=1024, description="Object key.")
    region: str = Field(default="us-east-1", min_length=1, max_length=64, description="Region requests are signed for.")
    format: Literal["JSONLines", "CSV"] = Field(
        default="JSONLines",
        description="JSONLines: one JSON value per line (blank lines skipped). CSV: RFC 4180 with a header record; "
        "each record becomes an object of the header's names to string values.",
    )
    credentials_secret: SecretReference = Field(
        description="Secret with keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (AWS_SESSION_TOKEN optional). "
        "The operator reads it to index the object; workers get it as environment variables "
        "(JOBBATCH_OBJECT_STORE_*). It never appears in status, Events or logs."
    )


class Payloads(_Model):
    """Where the items come from. Exactly one source must be set."""

    # "Exactly one source" as oneOf-of-required: CEL cannot see `items` (an untyped list).
    model_config = ConfigDict(
        json_schema_extra=_extra(
            oneOf=[
                {"required": ["items"]},
                {"required": ["configMap"]},
                {"required": ["count"]},
                {"required": ["objectStore"]},
            ]
        )
    )

    items: list[Any] | None = Field(
        default=None,
        description="Inline items, any JSON each. Keep them small (the whole JobBatch must fit in etcd); "
        "use configMap or count for large inputs.",
        json_schema_extra=_extra(items={"x-kubernetes-preserve-unknown-fields": True}),
    )
    config_map: ConfigMapSource | None = Field(
        default=None, description="Items as JSON Lines in a ConfigMap; snapshotted when the batch is accepted."
    )
    count: int | None = Field(
        default=None,
        ge=0,
        le=10_000_000,
        description="No data: the items are the indices 0..count-1 and workers fetch their own data.",
    )
    object_store: ObjectStoreSource | None = Field(
        default=None,
        description="Items as JSON Lines or CSV records of an object in S3-compatible storage, for inputs too big "
        "for a ConfigMap; sharded by records.",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> Payloads:
        chosen = [n for n in ("items", "config_map", "count", "object_store") if getattr(self, n) is not None]
        if len(chosen) != 1:
            raise ValueError(
                "exactly one of payloads.items, payloads.configMap, payloads.count, payloads.objectStore must be set"
            )
        return self


# A shard's attempts in one round (first run, or a rerun) never pass retry.limit, at most this.
MAX_RETRY_LIMIT = 100


class Backoff(_Model):
    """Delay before retry n (n = 0 for the first retry): min(maxSeconds, initialSeconds * multiplier^n),
    then scaled by a random factor in [1 - jitter, 1 + jitter]."""

    initial_seconds: float = Field(default=10.0, ge=0, le=86_400, description="Delay before the first retry.")
    multiplier: float = Field(default=2.0, ge=1, le=100, description="Growth factor between retries.")
    max_seconds: float = Field(default=600.0, ge=0, le=86_400, description="Upper bound of the delay.")
    jitter: float = Field(default=0.1, ge=0, le=1, description="Relative random spread of each delay.")


class Retry(_Model):
    """How failed shard attempts are retried."""

    limit: int = Field(default=3, ge=0, le=MAX_RETRY_LIMIT, description="Retries per shard after its first attempt.")
    backoff: Backoff = Field(default_factory=Backoff, description="Delay between attempts of a shard.")
    non_retryable_exit_codes: list[int] = Field(
        default_factory=list,
        max_length=50,
        description="A shard whose worker exits with one of these codes fails at once, without retries.",
        json_schema_extra=_extra(items={"type": "integer", "minimum": 1, "maximum": 255}),
    )
    disruption_limit: int = Field(
        default=3,
        ge=0,
        le=1000,
        description="Disruptions one attempt survives without using a retry: a pod evicted, preempted or lost "
        "with its node (and any pod failure that is not the worker's exit) is started again by the Job "
        "controller, after its own 10 s doubling delay. One more fails the attempt (reason Disrupted), and "
        "retries decide what follows. 0: the first disruption fails the attempt. Preemptions count: raise it "
        "for batches meant to be preempted.",
    )
    isolate: bool = Field(
        default=False,
        description="Poison-item isolation: a shard that fails for good (retries spent, a non-retryable exit code, "
        "a SkipRetry) is not failed whole; its items are halved and each half runs once, a failing half is halved "
        "again, down to single items, so every good item is processed and the bad ones are named "
        "(status.failedItems). A shard with a bad item still counts as failed (maxFailedShards counts shards). "
        "It costs at most 2 * k * ceil(log2(shardSize)) more attempts for k bad items (at most 16 pieces of one "
        "level are split: past that, a failing piece fails whole; a shard whose eighths all fail the same way "
        "stops at 14 pieces). Workers must read their items through the SDK, or honour "
        "JOBBATCH_ITEM_START and JOBBATCH_ITEM_END. Not with spec.results.",
    )


# Index ranges as the status writes them: "0-41,43".
# Indexes of at most 8 digits: shards are fewer than 10,000,000.
RANGES_PATTERN = r"^[0-9]{1,8}(-[0-9]{1,8})?(,[0-9]{1,8}(-[0-9]{1,8})?)*$"
# Attempt numbers stay within the 3 digits Job names have room for (naming.py); reruns start above
# the highest attempt so far, so this bounds how often a batch can be rerun (about 250 times with the
# default retry.limit).
MAX_ATTEMPT = 999


class Rerun(_Model):
    """Run a finished batch's failed shards again: set a new ``id`` (``kubectl jobbatch rerun`` does)."""

    id: str = Field(
        min_length=1,
        max_length=63,
        pattern=r"^[A-Za-z0-9]([-A-Za-z0-9_.:]*[A-Za-z0-9])?$",
        description="Names this rerun. A value the batch has not run yet asks for a rerun, which starts once the "
        "batch has finished (Succeeded or Failed).",
    )
    shards: str | None = Field(
        default=None,
        max_length=65_536,
        pattern=RANGES_PATTERN,
        description='Failed shards to run again, as index ranges ("3,7-9"); default: every failed shard. Shards '
        "that had not failed are left alone. Shards the batch never finished (it failed before they ran) always "
        "run.",
    )


class RerunStatus(_Model):
    """The latest rerun the operator started."""

    id: str = Field(description="spec.rerun.id of this rerun.")
    shards: int = Field(default=0, description="Shards it runs again: failed ones chosen plus unfinished ones.")
    first_attempt: int = Field(
        default=0,
        description="Its shards' attempts start here (above every earlier attempt), each with a fresh retry budget.",
    )
    start_time: datetime.datetime | None = Field(default=None, description="When it started.")
    count: int = Field(default=0, description="Reruns so far, this one included.")


class Results(_Model):
    """Keep each succeeded shard's result (what its worker passed to ``worker.result``) in ConfigMaps."""

    max_bytes: int = Field(
        default=1024,
        ge=1,
        le=MAX_RESULT_BYTES,
        description="Most bytes of one shard's result (its JSON, UTF-8); the SDK fails a shard whose result is "
        "larger (reason SkipRetry), and a larger one written some other way is not stored (status.results.errors). "
        "It also sets how many shards share a result ConfigMap (about 900 KB / (maxBytes + 10)).",
    )


class JobBatchSpec(_Model):
    """What to run: a worker pod template, the payloads, and how to shard and retry them."""

    # A transition rule on an optional field runs only when both versions have it: this one keeps
    # `results` from being added or removed after creation.
    model_config = ConfigDict(
        json_schema_extra=_extra(
            **{
                "x-kubernetes-validations": [
                    {"rule": "has(self.results) == has(oldSelf.results)", "message": "results is immutable"},
                    {
                        "rule": "!has(self.results) || !has(self.retry) || !has(self.retry.isolate) "
                        "|| !self.retry.isolate",
                        "message": "retry.isolate cannot be combined with results: a shard run in pieces has no "
                        "one result",
                    },
                ]
            }
        )
    )

    template: dict[str, Any] = Field(
        description="Pod template (PodTemplateSpec) of every shard's worker. restartPolicy is forced to Never. "
        "Immutable.",
        json_schema_extra=_extra(
            **{
                "x-kubernetes-preserve-unknown-fields": True,
                "x-kubernetes-validations": [
                    {"rule": "self == oldSelf", "message": "template is immutable"},
                    {
                        "rule": "has(self.spec) && has(self.spec.containers) && size(self.spec.containers) > 0",
                        "message": "template.spec.containers must list at least one container",
                    },
                ],
            }
        ),
    )
    payloads: Payloads = Field(
        description="The items to process. Immutable.",
        json_schema_extra=_extra(
            **{"x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "payloads is immutable"}]}
        ),
    )
    payload_schema: dict[str, Any] | None = Field(
        default=None,
        description="JSON Schema every item must satisfy; checked before anything starts. Immutable.",
        json_schema_extra=_extra(
            **{
                "x-kubernetes-preserve-unknown-fields": True,
                "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "payloadSchema is immutable"}],
            }
        ),
    )
    shard_size: int = Field(
        default=1,
        ge=1,
        le=1_000_000,
        description="Items per shard; the last shard may hold fewer. Immutable.",
        json_schema_extra=_extra(
            **{"x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "shardSize is immutable"}]}
        ),
    )
    parallelism: int = Field(
        default=10,
        ge=0,
        le=100_000,
        description="Most shards running at once: a hard ceiling. Changes take effect at once; lowering it "
        "below the running count stops the newest running attempts, which (as with suspend) use no retry and "
        "run again when slots free. 0 stops everything.",
    )
    priority_class_name: str | None = Field(
        default=None,
        max_length=253,
        description="PriorityClass of every worker pod; under a cap (--max-running-shards, a queue's own), "
        "higher-priority batches of the same queue start first.",
    )
    queue_name: str = Field(
        default=DEFAULT_QUEUE,
        max_length=63,
        pattern=DNS_LABEL,
        description="BatchQueue whose share of the cluster's running shards this batch draws from. A named queue "
        "that does not exist, or does not admit the batch's namespace, holds the batch (Stalled, reason "
        "QueueNotFound or QueueNotAllowed); the queue 'default' needs no object (weight 1, no cap of its own, "
        "unless a BatchQueue named default sets them). Changing it moves the batch, running shards included, to "
        "the other queue at once; nothing running stops.",
    )
    suspend: bool = Field(
        default=False,
        description="True stops launching and stops running shard attempts (their pods are deleted); "
        "attempts stopped this way do not use up retries. False resumes.",
    )
    start_after: datetime.datetime | None = Field(
        default=None,
        description="Launch nothing before this time (RFC 3339); moved into the future while running, the batch's "
        "Jobs stop as on suspend (no retry used) until then.",
    )
    retry: Retry = Field(default_factory=Retry, description="Retries of failed shards.")
    max_failed_shards: int = Field(
        default=0,
        ge=0,
        le=10_000,
        description="Permanently failed shards tolerated before the whole batch fails (at most 10,000, which "
        "keeps the status's index ranges bounded).",
    )
    shard_timeout_seconds: int | None = Field(
        default=None,
        ge=1,
        description="Deadline of each shard attempt; an attempt that exceeds it fails and is retried.",
    )
    active_deadline_seconds: int | None = Field(
        default=None, ge=1, description="Deadline of the whole batch, from its start; past it the batch fails."
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None,
        ge=0,
        description="Delete the finished batch (and everything it owns) this long after it finished.",
    )
    results: Results | None = Field(
        default=None,
        description="Collect every succeeded shard's result, in shard order, into ConfigMaps the batch owns "
        "(kubectl jobbatch results NAME; docs/operations.md#shard-results). A shard counts as succeeded once its "
        "result is stored. Immutable.",
        json_schema_extra=_extra(
            **{"x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "results is immutable"}]}
        ),
    )
    rerun: Rerun | None = Field(
        default=None,
        description="Run failed shards of the finished batch again (docs/operations.md#rerunning-failed-shards).",
    )
    successful_jobs_history_limit: int = Field(
        default=0,
        ge=0,
        le=10,
        description="Shard Jobs whose shards all succeeded kept with their pods, for kubectl logs: the most "
        "recently finished ones. Each holds up to its shard count of pods (2 x parallelism, at most 10,000), "
        "so keep it small.",
    )
    failed_jobs_history_limit: int = Field(
        default=5,
        ge=0,
        le=100,
        description="Shard Jobs holding failed attempts kept for inspection (kubectl logs) once no longer "
        "needed; their succeeded pods are removed.",
    )


class ShardCounts(_Model):
    """Shards by state; they add up to total."""

    total: int = Field(default=0, description="Shards in the batch.")
    pending: int = Field(default=0, description="Not started yet.")
    running: int = Field(
        default=0, description="An attempt is running (with spec.results: or succeeded, its result not stored yet)."
    )
    retrying: int = Field(default=0, description="Failed, waiting out the backoff before the next attempt.")
    succeeded: int = Field(default=0, description="Finished successfully.")
    failed: int = Field(default=0, description="Failed permanently.")


class ShardFailure(_Model):
    """One permanently failed shard, for the Failed condition and users' diagnosis."""

    shard: int
    attempt: int
    exit_code: int | None = None
    reason: str = Field(description="NonRetryableExitCode, RetriesExhausted, SkipRetry, ...")
    message: str = ""


class ItemFailure(_Model):
    """Items that failed when run apart (retry.isolate): a single item, or a piece failed whole."""

    items: str = Field(description='The items, as index ranges in the batch ("1017" or "1500-1749").')
    shard: int
    attempt: int
    exit_code: int | None = None
    reason: str = Field(default="", description="Error, OOMKilled, DeadlineExceeded, ... of the piece's pod.")
    message: str = Field(default="", description="The worker's termination message.")


class ResultError(_Model):
    """A succeeded shard whose result could not be stored."""

    shard: int
    reason: str = Field(description="NoResult, TooLarge, NotJSON, PodGone or PageConflict.")
    message: str = ""


class ResultsStatus(_Model):
    """Where the batch's results are, and which succeeded shards have none. Bounded like the rest."""

    config_map_prefix: str = Field(
        description="Results of shards [p * shardsPerPage, (p + 1) * shardsPerPage) are in ConfigMap "
        "<configMapPrefix><p>, one key per shard (its index) holding the result's JSON."
    )
    shards_per_page: int = Field(ge=1, description="Shards per result ConfigMap.")
    stored: int = Field(default=0, description="Succeeded shards whose result is stored.")
    missing: int = Field(
        default=0,
        description="Succeeded shards without a stored result: the worker wrote none, wrote one that is not "
        "stored (errors), or its pod was gone before the result was read.",
    )
    missing_shards: str = Field(
        default="",
        description="The first of those shards, as index ranges (at most 100 ranges: the status stays bounded).",
    )
    pending: int = Field(
        default=0, description="Succeeded shards whose result is being stored (counted as running until then)."
    )
    errors: list[ResultError] = Field(
        default_factory=list, max_length=10, description="The latest results that could not be stored (at most 10)."
    )


class Condition(_Model):
    """metav1.Condition."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    last_transition_time: datetime.datetime
    observed_generation: int | None = None


class JobBatchStatus(_Model):
    """What the operator observed and recorded. Bounded: counts and index ranges, never per-shard lists."""

    model_config = ConfigDict(extra="ignore")

    phase: Phase = Field(default="Pending", description="Pending, Running, Suspended, Succeeded or Failed.")
    observed_generation: int | None = Field(default=None, description="The spec generation last acted upon.")
    shards: ShardCounts = Field(default_factory=ShardCounts, description="Shards by state.")
    item_count: int | None = Field(default=None, description="Items in the batch, known once it is accepted.")
    payload_digest: str | None = Field(
        default=None,
        description="SHA-256 of the payload snapshot (JSON Lines), for items and configMap sources: a snapshot "
        "deleted by hand is re-created only from a source that still holds exactly these items.",
    )
    progress: str = Field(default="", description='Finished (succeeded + failed) over total shards, e.g. "41/100".')
    succeeded_shards: str = Field(default="", description='Indexes of succeeded shards, e.g. "0-41,43".')
    failed_shards: str = Field(default="", description="Indexes of permanently failed shards.")
    start_time: datetime.datetime | None = Field(default=None, description="When the first shard was launched.")
    completion_time: datetime.datetime | None = Field(default=None, description="When the batch finished.")
    highest_attempt: int | None = Field(
        default=None,
        description="The highest attempt any shard Job of the batch has had: a rerun's attempts start above it, so "
        "no Job name is used twice.",
    )
    rerun: RerunStatus | None = Field(default=None, description="The latest rerun started.")
    results: ResultsStatus | None = Field(default=None, description="Where the shards' results are (spec.results).")
    failures: list[ShardFailure] = Field(
        default_factory=list, max_length=10, description="The latest permanently failed shards (at most 10)."
    )
    failed_items: str = Field(
        default="",
        description="Items that failed when run apart (retry.isolate), as index ranges in the batch: the first "
        "500 ranges (the status stays bounded; failedItemCount counts them all).",
    )
    failed_item_count: int = Field(default=0, description="Items that failed when run apart (retry.isolate).")
    item_failures: list[ItemFailure] = Field(
        default_factory=list,
        max_length=10,
        description="The first failed items' pieces, with their worker's message (at most 10).",
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Accepted, Running, Suspended, Complete, Failed; and Ready, Reconciling, Stalled (kstatus).",
        json_schema_extra=_extra(**{"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]}),
    )

    def condition(self, ctype: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == ctype), None)

    def began(self) -> datetime.datetime | None:
        """When the current run began: the latest rerun's start, else the batch's (deadlines, durations)."""
        if self.rerun is not None and self.rerun.shards and self.rerun.start_time is not None:
            return self.rerun.start_time
        return self.start_time


class JobBatch(_Model):
    """A batch of payloads run as sharded worker Jobs."""

    model_config = ConfigDict(extra="ignore")

    api_version: str = API_VERSION
    kind: str = KIND
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: JobBatchSpec
    status: JobBatchStatus = Field(default_factory=JobBatchStatus)


# -- CronJobBatch: JobBatches on a schedule, as a CronJob makes Jobs ---------------------------------

CRON_KIND = "CronJobBatch"
CRON_PLURAL = "cronjobbatches"
CRON_SINGULAR = "cronjobbatch"
CRON_SHORT_NAMES = ["cjb"]
# On every JobBatch a CronJobBatch creates (with an ownerReference to it, which is what is trusted).
LABEL_CRON = "jobbatch.io/cron-job-batch"
ANNOTATION_SCHEDULED_TIME = "jobbatch.io/scheduled-time"
# A created batch is named <cron>-<scheduled time in Unix minutes> (8 digits until 2160), as CronJob's Jobs.
MAX_CRON_NAME = 52
ConcurrencyPolicy = Literal["Allow", "Forbid", "Replace"]


class JobBatchTemplateMetadata(_Model):
    labels: dict[str, str] = Field(default_factory=dict, description="Labels of every created JobBatch.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Annotations of every created JobBatch.")


class JobBatchTemplate(_Model):
    """The JobBatch each scheduled run creates."""

    metadata: JobBatchTemplateMetadata = Field(default_factory=JobBatchTemplateMetadata)
    spec: JobBatchSpec


class CronJobBatchSpec(_Model):
    """When to create JobBatches, and what they run: the CronJob API, making JobBatches instead of Jobs."""

    schedule: str = Field(
        min_length=1,
        max_length=200,
        description='Cron schedule, as a CronJob\'s: "minute hour day-of-month month day-of-week" or @hourly, '
        "@daily, @weekly, @monthly, @yearly.",
    )
    time_zone: str | None = Field(
        default=None,
        max_length=64,
        description="IANA time zone of the schedule (e.g. Europe/Berlin); default UTC.",
    )
    concurrency_policy: ConcurrencyPolicy = Field(
        default="Allow",
        description="When a run is due while an earlier batch is still running: Allow (run both), Forbid (the new "
        "run waits until no batch runs, within startingDeadlineSeconds) or Replace (start the new run, then delete "
        "the running batches).",
    )
    starting_deadline_seconds: int | None = Field(
        default=None,
        ge=0,
        description="A run that could not start within this many seconds of its time is skipped (counted as "
        "missed). Default: no deadline; after an outage only the latest missed run starts.",
    )
    suspend: bool = Field(
        default=False,
        description="No new runs while true; running batches go on. On resuming, the latest run missed meanwhile "
        "starts (within startingDeadlineSeconds), as with a CronJob.",
    )
    successful_batches_history_limit: int = Field(
        default=3, ge=0, le=100, description="Succeeded batches kept; older ones are deleted."
    )
    failed_batches_history_limit: int = Field(
        default=1, ge=0, le=100, description="Failed batches kept; older ones are deleted."
    )
    job_batch_template: JobBatchTemplate = Field(description="The JobBatch each run creates.")


class CronJobBatchStatus(_Model):
    """What the operator last did. Bounded: at most 20 active batch names."""

    model_config = ConfigDict(extra="ignore")

    active: list[str] = Field(
        default_factory=list, max_length=20, description="Running batches it created (the oldest 20)."
    )
    active_count: int = Field(default=0, description="Running batches it created.")
    last_schedule_time: datetime.datetime | None = Field(
        default=None, description="The time of the latest run created (its scheduled time, not when it started)."
    )
    last_successful_time: datetime.datetime | None = Field(
        default=None, description="When the latest batch it created succeeded."
    )
    observed_generation: int | None = Field(default=None, description="The spec generation last acted upon.")
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Scheduled: True while the schedule and time zone can be read (reason InvalidSchedule or "
        "InvalidTimeZone otherwise).",
        json_schema_extra=_extra(**{"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]}),
    )

    def condition(self, ctype: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == ctype), None)


class CronJobBatch(_Model):
    """JobBatches created on a schedule."""

    model_config = ConfigDict(extra="ignore")

    api_version: str = API_VERSION
    kind: str = CRON_KIND
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: CronJobBatchSpec
    status: CronJobBatchStatus = Field(default_factory=CronJobBatchStatus)


# -- BatchQueue: a cluster-wide share of running shards ---------------------------------------------

QUEUE_KIND = "BatchQueue"
QUEUE_PLURAL = "batchqueues"
QUEUE_SINGULAR = "batchqueue"
QUEUE_SHORT_NAMES = ["bq"]


class BatchQueueSpec(_Model):
    """A queue's weight and caps. Batches name it in spec.queueName."""

    weight: int = Field(
        default=1,
        ge=1,
        le=1000,
        description="Share of the operator's --max-running-shards among queues with work waiting: a queue of "
        "weight 6 next to ones of 3 and 1 holds 60 % of the running shards while all three have work.",
    )
    max_running_shards: int | None = Field(
        default=None,
        ge=0,
        le=1_000_000,
        description="Most shards of this queue's batches running at once, whatever the free capacity. 0 holds "
        "the queue. Lowering it stops nothing: it applies as running shards end.",
    )
    max_running_shards_per_namespace: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000,
        description="Most shards of this queue running at once for the batches of any one namespace, so one "
        "tenant cannot take the whole queue.",
    )
    namespaces: list[str] = Field(
        default_factory=list,
        max_length=1000,
        description="Namespaces whose batches may use this queue; empty: every namespace. A batch elsewhere that "
        "names it is held (Stalled, reason QueueNotAllowed): without this list, any tenant may name any queue.",
        json_schema_extra=_extra(items={"type": "string", "maxLength": 63, "pattern": DNS_LABEL}),
    )


class BatchQueueStatus(_Model):
    """What the operator's dispatcher holds for the queue, written every few seconds while it changes."""

    model_config = ConfigDict(extra="ignore")

    running_shards: int = Field(default=0, description="Shards of its batches running (slots held).")
    waiting_shards: int = Field(
        default=0, description="Shards its batches could start now but a cap or the other queues' shares hold back."
    )
    fair_share: int = Field(
        default=0,
        description="Running shards it is entitled to now: its weight's part of --max-running-shards among the "
        "queues with work, within its own cap (0 when there is no cluster-wide cap).",
    )
    admitted_batches: int = Field(default=0, description="Its batches with shards running.")
    waiting_batches: int = Field(default=0, description="Its batches with shards waiting and none running.")
    operator: str = Field(
        default="",
        description="The operator release that wrote these numbers (its Lease, or the namespaces it watches): with "
        "several releases in a cluster, each counts only its own batches.",
    )


class BatchQueue(_Model):
    """A weighted share of the cluster's running shards, with optional caps, for the JobBatches that name it."""

    model_config = ConfigDict(extra="ignore")

    api_version: str = API_VERSION
    kind: str = QUEUE_KIND
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: BatchQueueSpec = Field(default_factory=BatchQueueSpec)
    status: BatchQueueStatus = Field(default_factory=BatchQueueStatus)
