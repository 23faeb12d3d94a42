"""The ``jobbatch`` command: ``jobbatch run`` starts the operator; ``jobbatch cleanup`` frees what it holds."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from jobbatch.config import OperatorConfig
from jobbatch.version import __version__


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def _pod_namespace() -> str:
    try:
        with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace", encoding="utf-8") as f:
            return f.read().strip() or "default"
    except OSError:
        return "default"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jobbatch",
        description="Kubernetes operator that shards JobBatch payloads into worker Jobs.",
    )
    parser.add_argument("--version", action="version", version=f"jobbatch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser(
        "run",
        help="start the operator (uses in-cluster credentials, else $KUBECONFIG)",
        description="Start the operator. Settings may also come from JOBBATCH_* environment variables.",
    )
    defaults = OperatorConfig()
    run.add_argument(
        "--namespace",
        "-n",
        action="append",
        dest="namespaces",
        metavar="NS",
        default=[ns for ns in os.environ.get("JOBBATCH_NAMESPACES", "").split(",") if ns],
        help="watch only this namespace (repeatable; env JOBBATCH_NAMESPACES, comma-separated); "
        "default: all namespaces",
    )
    run.add_argument(
        "--max-running-shards",
        type=int,
        default=_env_int("JOBBATCH_MAX_RUNNING_SHARDS", defaults.max_running_shards),
        help="cluster-wide cap on running shard attempts, shared among BatchQueues by weight; inside a queue "
        "higher-priority batches start first (0 = no cap; env JOBBATCH_MAX_RUNNING_SHARDS)",
    )
    run.add_argument(
        "--metrics-port",
        type=int,
        default=_env_int("JOBBATCH_METRICS_PORT", defaults.metrics_port),
        help="port of the Prometheus /metrics endpoint (0 disables it; env JOBBATCH_METRICS_PORT)",
    )
    run.add_argument(
        "--metrics-bind-address",
        default=os.environ.get("JOBBATCH_METRICS_BIND_ADDRESS", defaults.metrics_bind_address),
        help="address of the metrics endpoint (127.0.0.1: only within the pod, e.g. behind kube-rbac-proxy; "
        "env JOBBATCH_METRICS_BIND_ADDRESS)",
    )
    run.add_argument(
        "--liveness-endpoint",
        default=os.environ.get("JOBBATCH_LIVENESS_ENDPOINT", defaults.liveness_endpoint),
        help="kopf liveness endpoint URL (empty disables it; env JOBBATCH_LIVENESS_ENDPOINT)",
    )
    run.add_argument(
        "--api-qps",
        type=float,
        default=float(os.environ.get("JOBBATCH_API_QPS") or defaults.api_qps),
        help="sustained rate of the operator's API calls (env JOBBATCH_API_QPS)",
    )
    run.add_argument(
        "--api-burst",
        type=int,
        default=_env_int("JOBBATCH_API_BURST", defaults.api_burst),
        help="burst of the operator's API calls (env JOBBATCH_API_BURST)",
    )
    run.add_argument(
        "--leader-elect",
        action="store_true",
        dest="leader_election",
        default=os.environ.get("JOBBATCH_LEADER_ELECT", "").lower() in ("1", "true", "yes"),
        help="reconcile only while holding a coordination.k8s.io Lease, for several replicas "
        "(env JOBBATCH_LEADER_ELECT)",
    )
    run.add_argument(
        "--leader-election-namespace",
        default=os.environ.get("JOBBATCH_LEADER_ELECTION_NAMESPACE") or _pod_namespace(),
        help="namespace of the Lease (env JOBBATCH_LEADER_ELECTION_NAMESPACE; default: the pod's own)",
    )
    run.add_argument(
        "--leader-election-lease",
        default=os.environ.get("JOBBATCH_LEADER_ELECTION_LEASE", "jobbatch-operator"),
        help="name of the Lease (env JOBBATCH_LEADER_ELECTION_LEASE)",
    )
    run.add_argument(
        "--lease-duration",
        type=int,
        dest="lease_duration_seconds",
        default=_env_int("JOBBATCH_LEASE_DURATION", defaults.lease_duration_seconds),
        help="seconds a standby waits on an unrenewed Lease before taking over (env JOBBATCH_LEASE_DURATION)",
    )
    run.add_argument(
        "--payload-validation-timeout",
        type=float,
        default=float(os.environ.get("JOBBATCH_PAYLOAD_VALIDATION_TIMEOUT") or defaults.payload_validation_timeout),
        help="seconds acceptance may spend checking one batch's payloads against its payloadSchema; "
        "past it the batch is not accepted (env JOBBATCH_PAYLOAD_VALIDATION_TIMEOUT)",
    )
    run.add_argument(
        "--payload-indexing-timeout",
        type=float,
        default=float(os.environ.get("JOBBATCH_PAYLOAD_INDEXING_TIMEOUT") or defaults.payload_indexing_timeout),
        help="seconds acceptance may spend reading one objectStore payload source to index it; past it the "
        "batch is not accepted (env JOBBATCH_PAYLOAD_INDEXING_TIMEOUT)",
    )
    run.add_argument(
        "--access-binding",
        default=os.environ.get("JOBBATCH_ACCESS_BINDING", defaults.access_binding),
        metavar="NAME",
        help="with --namespace: the RoleBinding that grants the operator its rights in each watched "
        "namespace; the operator keeps it (a finalizer) until nothing of its own is left there, so a deleted "
        "namespace never waits on the operator's finalizers (env JOBBATCH_ACCESS_BINDING; the chart sets it)",
    )
    run.add_argument(
        "--log-level",
        default=os.environ.get("JOBBATCH_LOG_LEVEL", defaults.log_level),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper,
        help="log level (env JOBBATCH_LOG_LEVEL)",
    )
    cleanup = sub.add_parser(
        "cleanup",
        help="remove the operator's finalizers from JobBatches, shard Jobs and its RoleBindings (after an uninstall)",
        description="Remove the finalizers the operator puts on JobBatches (jobbatch.io/kopf-finalizer), "
        "shard Jobs (jobbatch.io/shard-record) and, installed per namespace, its RoleBindings "
        "(jobbatch.io/namespace-access), so they and their namespaces can be deleted without an "
        "operator. Deletes nothing. Run it only when no operator runs. Without --yes, only lists them.",
    )
    cleanup.add_argument(
        "--namespace", "-n", action="append", dest="namespaces", metavar="NS", default=[],
        help="only this namespace (repeatable); default: all namespaces",
    )  # fmt: skip
    cleanup.add_argument("--yes", action="store_true", help="remove them (default: list what holds one)")
    cleanup.add_argument(
        "--force", action="store_true",
        help="remove them even though an operator's Lease (named *jobbatch-operator*) was renewed just now",
    )  # fmt: skip
    return parser


async def _cleanup(namespaces: tuple[str, ...], apply: bool, force: bool = False) -> int:
    import datetime

    from kubernetes_asyncio.client.exceptions import ApiException

    from jobbatch import cleanup  # deferred: --help must not import the Kubernetes client
    from jobbatch.kube import Conflict, Kube, new_api_client

    api_client = await new_api_client()
    try:
        kube = Kube(api_client)
        if apply and not force:
            try:
                live = cleanup.live_leases(await kube.list_leases(), datetime.datetime.now(datetime.UTC))
            except ApiException as exc:
                if exc.status != 403:
                    raise
                live = []
                print("warning: may not list Leases, so cannot tell whether an operator still runs",
                      file=sys.stderr)  # fmt: skip
            for lease in live:
                print(f"an operator still runs: Lease {lease}", file=sys.stderr)
            if live:
                print("not releasing anything while it runs (it releases what it holds itself; --force to "
                      "release anyway)", file=sys.stderr)  # fmt: skip
                return 1
        held = await cleanup.find_held(kube, namespaces)
        await cleanup.find_held_bindings(kube, held, namespaces)
        if apply:
            try:
                await cleanup.release(kube, held)
            except Conflict as exc:
                print(f"{exc} (something else changed it meanwhile)", file=sys.stderr)
                return 1
        for kind, objects in (("job", held.jobs), ("jobbatch", held.batches), ("rolebinding", held.bindings)):
            for namespace, name, _ in objects:
                print(f"{'released' if apply else 'holds a finalizer'}: {kind} {namespace}/{name}")
        verb = "released" if apply else "found (run with --yes to release them)"
        counts = f"{len(held.jobs)} shard Jobs, {len(held.batches)} JobBatches and {len(held.bindings)} RoleBindings"
        print(f"{counts} {verb}")
    finally:
        await api_client.close()
    return 0


def config_from_args(args: argparse.Namespace) -> OperatorConfig:
    return OperatorConfig(
        namespaces=tuple(args.namespaces),
        max_running_shards=args.max_running_shards,
        metrics_port=args.metrics_port,
        metrics_bind_address=args.metrics_bind_address,
        liveness_endpoint=args.liveness_endpoint,
        log_level=args.log_level,
        api_qps=args.api_qps,
        api_burst=args.api_burst,
        leader_election=args.leader_election,
        leader_election_namespace=args.leader_election_namespace,
        leader_election_lease=args.leader_election_lease,
        lease_duration_seconds=args.lease_duration_seconds,
        payload_validation_timeout=args.payload_validation_timeout,
        payload_indexing_timeout=args.payload_indexing_timeout,
        access_binding=args.access_binding,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "run":
        try:
            config = config_from_args(args)
        except ValueError as exc:
            parser.error(str(exc))
        from jobbatch.runtime import run  # deferred: --help must not import kopf

        run(config)
    elif args.command == "cleanup":
        return asyncio.run(_cleanup(tuple(args.namespaces), args.yes, args.force))
    return 0


if __name__ == "__main__":
    sys.exit(main())
