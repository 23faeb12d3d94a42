"""Operator settings: one typed object built from the command line (or env), passed down explicitly.

Nothing reads ``os.environ`` or global flags after start-up; the runtime and the
handlers receive this object, so tests can build one directly.
"""

from __future__ import annotations

import dataclasses
import logging


@dataclasses.dataclass(frozen=True)
class OperatorConfig:
    """How one operator process behaves."""

    # Namespaces to watch; empty means the whole cluster.
    namespaces: tuple[str, ...] = ()
    # Cluster-wide cap on running shard attempts across all batches (0 = no cap).
    max_running_shards: int = 0
    # HTTP port for Prometheus metrics (0 disables the endpoint).
    metrics_port: int = 8080
    # Address the metrics endpoint binds to: 127.0.0.1 keeps it to the pod (behind an authenticating
    # proxy such as kube-rbac-proxy in the same pod).
    metrics_bind_address: str = "0.0.0.0"
    # kopf's liveness endpoint (an empty string disables it).
    liveness_endpoint: str = "http://0.0.0.0:8081/healthz"
    log_level: str = "INFO"
    # Client-side limit on the operator's own API calls (watches excluded). Each shard costs
    # about three writes (create, release, delete), so this bounds shards per second; the
    # API server's priority and fairness still protects it from a busy operator.
    api_qps: float = 200.0
    api_burst: int = 400
    # Leader election: with several replicas, only the holder of this Lease reconciles.
    leader_election: bool = False
    leader_election_namespace: str = "default"
    leader_election_lease: str = "jobbatch-operator"
    lease_duration_seconds: int = 15
    # Seconds acceptance may spend checking one batch's payloads against its payloadSchema (in a
    # child process, killed at this deadline; the batch is then not accepted).
    payload_validation_timeout: float = 20.0
    # Seconds acceptance may spend reading one object-storage source to index it (and check its
    # records against payloadSchema), in a child process of a sandbox of its own.
    payload_indexing_timeout: float = 300.0
    # With namespaces: the RoleBinding granting the operator its rights in each of them, held by a
    # finalizer until nothing of the operator's is left there (jobbatch.access). Empty: none is held.
    access_binding: str = ""

    def __post_init__(self) -> None:
        if self.max_running_shards < 0:
            raise ValueError("max_running_shards must be >= 0")
        if not 0 <= self.metrics_port <= 65535:
            raise ValueError("metrics_port must be a TCP port (0 disables metrics)")
        if self.lease_duration_seconds < 3:
            raise ValueError("lease_duration_seconds must be >= 3")
        if self.payload_validation_timeout <= 0 or self.payload_indexing_timeout <= 0:
            raise ValueError("payload_validation_timeout and payload_indexing_timeout must be > 0")
        if self.api_qps <= 0 or self.api_burst < 1:
            raise ValueError("api_qps must be > 0 and api_burst >= 1")
        if self.access_binding and not self.namespaces:
            raise ValueError("access_binding needs namespaces: cluster-wide rights come from a ClusterRoleBinding")
        if logging.getLevelName(self.log_level.upper()) == f"Level {self.log_level.upper()}":
            raise ValueError(f"unknown log level {self.log_level!r}")

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces
