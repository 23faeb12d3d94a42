"""`kubectl jobbatch`, run as users run it: through kubectl's plugin lookup, against the local cluster."""

from __future__ import annotations

import asyncio
import functools
import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

from kubernetes_asyncio import client

from e2e import krew, tools
from jobbatch import naming
from jobbatch.api import SHARD_FINALIZER as jb_finalizer
from tests.integration.conftest import OperatorFactory
from tests.integration.harness import Batches, real_template, template
from tests.waiting import eventually

# kubectl finds `kubectl-jobbatch` on PATH: the venv's bin folder, where pip put the script.
PLUGIN_PATH = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"


async def kubectl_jobbatch(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [str(tools.bin_dir() / "kubectl"), "jobbatch", f"--kubeconfig={kubeconfig}", *args]
    env = {**os.environ, "PATH": PLUGIN_PATH}
    return await asyncio.to_thread(subprocess.run, cmd, capture_output=True, text=True, timeout=180, env=env)


async def test_status_failures_and_wait_tell_a_failed_batch_from_a_complete_one(
    kubeconfig: Path, namespace: str, batches: Batches, operator: OperatorFactory
) -> None:
    await operator()
    await batches.create("ok", {"template": template(duration="1s"), "payloads": {"count": 3}})
    bad = template(exit_code="7", fail_shards="4")
    await batches.create(
        "bad",
        {"template": bad, "payloads": {"count": 6}, "parallelism": 6, "retry": {"nonRetryableExitCodes": [7]}},
    )

    # Plain `kubectl wait --for=condition=Complete` waits out its timeout on a failed batch; this does not.
    done = await kubectl_jobbatch(kubeconfig, "wait", "ok", "-n", namespace, "--timeout", "90s")
    assert (done.returncode, done.stdout.strip()) == (0, "jobbatch.jobbatch.io/ok Complete"), done.stderr
    failed = await kubectl_jobbatch(kubeconfig, "-n", namespace, "wait", "bad", "--timeout", "90s")
    assert (failed.returncode, failed.stdout.strip()) == (1, "jobbatch.jobbatch.io/bad Failed"), failed.stderr

    status = await kubectl_jobbatch(kubeconfig, "status", "bad", "-n", namespace)
    assert status.returncode == 0, status.stderr
    assert "Phase:       Failed" in status.stdout
    assert "\x1b[" not in status.stdout  # no colour off a terminal
    (strip,) = [line.strip() for line in status.stdout.splitlines() if line.startswith("  ")]
    assert len(strip) == 6
    assert strip[4] == "x"  # the failed shard
    assert "Failed shards: 4" in status.stdout

    rows = json.loads((await kubectl_jobbatch(kubeconfig, "failures", "bad", "-n", namespace, "-o", "json")).stdout)
    assert [(r["shard"], r["attempt"], r["exitCode"], r["reason"]) for r in rows] == [(4, 0, 7, "NonRetryableExitCode")]
    table = (await kubectl_jobbatch(kubeconfig, "failures", "bad", "-n", namespace)).stdout.splitlines()
    assert table[0].split() == ["SHARD", "ATTEMPT", "EXIT", "CODE", "REASON", "MESSAGE"]

    listing = (await kubectl_jobbatch(kubeconfig, "status", "-n", namespace)).stdout.splitlines()
    assert listing[0].split() == ["NAME", "PHASE", "PROGRESS", "FAILED", "SHARDS"]
    by_name = {line.split()[0]: line.split() for line in listing[1:]}
    assert by_name["ok"][1:4] == ["Succeeded", "3/3", "0"]
    assert by_name["ok"][4] == "###"
    everywhere = (await kubectl_jobbatch(kubeconfig, "status", "-A")).stdout.splitlines()
    assert everywhere[0].split()[0] == "NAMESPACE"
    assert any(line.split()[:2] == [namespace, "bad"] for line in everywhere[1:])

    missing = await kubectl_jobbatch(kubeconfig, "status", "nope", "-n", namespace)
    assert missing.returncode == 4
    assert f'jobbatch "nope" not found in namespace "{namespace}"' in missing.stderr

    # rerun: nothing failed in "ok", so the operator refuses; "bad" runs shard 4 again, which fails again.
    nothing = await kubectl_jobbatch(kubeconfig, "rerun", "ok", "-n", namespace)
    assert nothing.returncode == 1, nothing.stdout + nothing.stderr
    assert "refused (NothingToRerun): rerun " in nothing.stdout
    await eventually(lambda: batches.released("bad"), what="the failed batch's Jobs stopped: a rerun waits for that")
    again = await kubectl_jobbatch(kubeconfig, "rerun", "bad", "-n", namespace, "--id", "second-try")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "rerun second-try: running 1 failed shard (4)" in again.stdout
    waited = await kubectl_jobbatch(kubeconfig, "wait", "bad", "-n", namespace, "--timeout", "90s")
    assert waited.returncode == 1, waited.stdout + waited.stderr  # the rerun's outcome, not the old one
    rows = json.loads((await kubectl_jobbatch(kubeconfig, "failures", "bad", "-n", namespace, "-o", "json")).stdout)
    assert [(r["shard"], r["attempt"], r["exitCode"]) for r in rows] == [(4, 1, 7)]  # a new attempt, failed again
    status = await kubectl_jobbatch(kubeconfig, "status", "bad", "-n", namespace)
    assert "Rerun:       second-try: " in status.stdout


async def test_scale_suspend_and_resume_steer_a_running_batch(
    kubeconfig: Path, namespace: str, batches: Batches, operator: OperatorFactory
) -> None:
    await operator()
    await batches.create("long", {"template": template(duration="1h"), "payloads": {"count": 10}, "parallelism": 2})

    async def running(count: int) -> bool:
        batch = await batches.get("long")
        return bool((batch.get("status") or {}).get("shards", {}).get("running") == count)

    await eventually(lambda: running(2), what="two shards running")
    status = (await kubectl_jobbatch(kubeconfig, "status", "long", "-n", namespace)).stdout
    (strip,) = [line.strip() for line in status.splitlines() if line.startswith("  ")]
    assert strip.count(">") == 2  # the running shards, from their pods

    scaled = await kubectl_jobbatch(kubeconfig, "scale", "long", "--parallelism", "3", "-n", namespace)
    assert scaled.returncode == 0, scaled.stderr
    assert (await batches.get("long"))["spec"]["parallelism"] == 3
    await eventually(lambda: running(3), what="three shards running after the scale")

    assert (await kubectl_jobbatch(kubeconfig, "suspend", "long", "-n", namespace)).returncode == 0
    await batches.wait_for("long", "Suspended")
    await eventually(lambda: running(0), what="no shard running while suspended")
    waited = await kubectl_jobbatch(kubeconfig, "wait", "long", "-n", namespace, "--timeout", "2s")
    assert waited.returncode == 3
    assert "still Suspended after 2s" in waited.stdout

    assert (await kubectl_jobbatch(kubeconfig, "resume", "long", "-n", namespace)).returncode == 0
    await eventually(lambda: running(3), what="three shards running again after resume")
    refused = await kubectl_jobbatch(kubeconfig, "scale", "long", "--parallelism", "-1", "-n", namespace)
    assert refused.returncode == 2


async def test_logs_of_a_shards_attempt_on_the_real_node(
    api: client.ApiClient, kubeconfig: Path, namespace: str, batches: Batches, operator: OperatorFactory, real_node: str
) -> None:
    await operator()
    script = "import sys; from jobbatch import worker; s = worker.Shard.from_env(); "
    script += "print(f'shard {s.index} attempt {s.attempt} says hello', flush=True); "
    script += "sys.exit(7 if (s.index, s.attempt) == (1, 0) else 0)"
    spec = {
        "template": real_template(command=["python", "-c", script]),
        "payloads": {"count": 2},
        "retry": {"limit": 1, "backoff": {"initialSeconds": 0, "jitter": 0}},
    }
    await batches.create("talk", spec)
    await batches.wait_for("talk", "Complete")

    # The failed attempt's Job is kept (failedJobsHistoryLimit), so are its pod and logs.
    first = await kubectl_jobbatch(kubeconfig, "logs", "talk", "--shard", "1", "--attempt", "0", "-n", namespace)
    assert first.returncode == 0, first.stderr
    assert "shard 1 attempt 0 says hello" in first.stdout

    # Once the succeeded attempts' Jobs and pods are gone (deleted after the batch completed), the latest
    # attempt of shard 1 still kept is the failed one; shard 0 has none, and the plugin says so.
    async def only_failed_attempts_kept() -> bool:
        pods = await client.CoreV1Api(api).list_namespaced_pod(namespace)
        return all(p.metadata.labels.get("jobbatch.io/attempt") == "0" for p in pods.items) and all(
            p.status.phase == "Failed" for p in pods.items
        )

    await eventually(only_failed_attempts_kept, what="only the failed attempt's pod left")
    followed = await kubectl_jobbatch(kubeconfig, "logs", "talk", "--shard", "1", "-f", "-n", namespace)
    assert followed.returncode == 0, followed.stderr
    assert "shard 1 attempt 0 says hello" in followed.stdout
    gone = await kubectl_jobbatch(kubeconfig, "logs", "talk", "--shard", "0", "-n", namespace)
    assert gone.returncode == 4
    assert "no pod of shard 0 of jobbatch talk is kept" in gone.stderr


async def test_rerun_of_chosen_shards_and_the_successful_jobs_kept_whole(
    api: client.ApiClient, kubeconfig: Path, namespace: str, batches: Batches, operator: OperatorFactory
) -> None:
    """`rerun --shards 3` runs shard 3 alone again (1 stays failed); successfulJobsHistoryLimit keeps the
    rerun's Job, which ran without a failure, with its pod."""
    await operator()
    spec = {
        "template": template(exit_code="42", fail_shards="1,3", fail_attempts="0"),
        "payloads": {"count": 5},
        "parallelism": 5,
        "maxFailedShards": 2,
        "retry": {"limit": 0},
        "successfulJobsHistoryLimit": 1,
    }
    created = await batches.create("chosen", spec)
    first = await batches.wait_for("chosen", "Complete")
    assert first["status"]["failedShards"] == "1,3"
    await eventually(lambda: batches.released("chosen"), what="the batch's Jobs stopped: a rerun waits for that")
    out = await kubectl_jobbatch(kubeconfig, "rerun", "chosen", "--shards", "3", "--id", "only-3", "-n", namespace)
    assert out.returncode == 0, out.stderr
    status = await batches.wait_status(
        "chosen",
        lambda s: s.get("phase") == "Succeeded" and (s.get("rerun") or {}).get("id") == "only-3",
        "the rerun of shard 3 to succeed",
    )
    assert status["failedShards"] == "1"
    assert status["succeededShards"] == "0,2-4"
    assert status["rerun"]["shards"] == 1
    # The rerun's Job (shard 3, attempt 1) is the latest without a failure: kept, pod and all.
    kept = naming.job_name("chosen", created["metadata"]["uid"], 3, 1)

    async def kept_whole() -> bool:
        jobs = {j.metadata.name: j for j in await batches.jobs()}
        pods = await client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=f"job-name={kept}")
        released = kept in jobs and jb_finalizer not in (jobs[kept].metadata.finalizers or [])
        return released and [p.status.phase for p in pods.items] == ["Succeeded"]

    await eventually(kept_whole, what=f"Job {kept} released and kept with its succeeded pod")


async def test_progress_shows_each_running_shards_last_report_on_the_real_node(
    kubeconfig: Path, namespace: str, batches: Batches, operator: OperatorFactory, real_node: str
) -> None:
    """worker.progress prints a log line; `kubectl jobbatch progress` reads the last one of each running pod."""
    await operator()
    script = "import signal; from jobbatch import worker; s = worker.Shard.from_env(); "
    script += "worker.progress(1, 10); worker.progress(3 + s.index, 10, force=True); signal.pause()"
    spec = {"template": real_template(command=["python", "-c", script]), "payloads": {"count": 2}}
    await batches.create("busy", spec)

    async def reported() -> list[dict[str, object]] | None:
        shown = await kubectl_jobbatch(kubeconfig, "progress", "busy", "-n", namespace, "-o", "json")
        assert shown.returncode == 0, shown.stderr
        rows = json.loads(shown.stdout)
        return rows if len(rows) == 2 and all(r["done"] is not None for r in rows) else None

    rows = await eventually(reported, what="both running shards' progress reports")
    assert [(r["shard"], r["items"], r["done"], r["total"], r["percent"]) for r in rows] == [
        (0, "0-0", 3, 10, "30%"),
        (1, "1-1", 4, 10, "40%"),
    ]
    table = await kubectl_jobbatch(kubeconfig, "progress", "busy", "-n", namespace)
    assert table.stdout.splitlines()[0].split()[:6] == ["SHARD", "ATTEMPT", "ITEMS", "DONE", "TOTAL", "PERCENT"]
    assert " ago " in table.stdout.splitlines()[1]


async def test_the_krew_package_installs_a_plugin_that_runs(
    kubeconfig: Path, namespace: str, batches: Batches, tmp_path: Path
) -> None:
    """The release archive and manifest (e2e/krew.py) as krew-index checks them and as a user installs
    them: krew downloads the archive from its URL, checks its SHA-256, and the plugin's first run builds
    its private venv from the wheels inside and talks to the cluster; uninstalling removes it all."""
    served = tmp_path / "release"
    archive = krew.build_archive(served)
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        uri = f"http://127.0.0.1:{server.server_port}/{archive.name}"
        manifest = tmp_path / "jobbatch.yaml"  # krew wants the file named as the plugin
        manifest.write_text(krew.manifest(uri=uri, sha256=krew.sha256_of(archive), homepage="https://example.com"))
        # kubectl runs krew as its `kubectl-krew` plugin; the plugin finds kubectl and python3 on PATH.
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        (bin_dir / "kubectl-krew").symlink_to(tools.bin_dir() / "krew")
        krew_root = tmp_path / "krew"
        path = os.pathsep.join(
            [str(krew_root / "bin"), str(bin_dir), str(tools.bin_dir()), "/usr/local/bin:/usr/bin:/bin"]
        )
        env = {"PATH": path, "KREW_ROOT": str(krew_root), "HOME": str(tmp_path), "KUBECONFIG": str(kubeconfig)}

        def run(*cmd: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)

        # What krew-index's CI runs on a manifest: its schema and platform selectors, then an install
        # (downloaded from the URI, checked against the SHA-256) that must also unpack a LICENSE.
        checked = await asyncio.to_thread(
            run, str(tools.bin_dir() / "validate-krew-manifest"), "-manifest", str(manifest)
        )
        assert checked.returncode == 0, checked.stderr
        assert "all 1 spec.platforms installed fine" in checked.stderr

        installed = await asyncio.to_thread(run, "kubectl", "krew", "install", f"--manifest={manifest}")
        assert installed.returncode == 0, installed.stderr
        await batches.create("seen", {"template": template(), "payloads": {"count": 2}})
        status = await asyncio.to_thread(run, "kubectl", "jobbatch", "status", "-n", namespace)
        assert status.returncode == 0, status.stderr
        assert "first run, installing the plugin" in status.stderr
        assert status.stdout.splitlines()[1].split()[0] == "seen"
        venv = krew_root / "store" / "jobbatch" / krew.VERSION / "venv"
        assert (venv / "bin" / "kubectl-jobbatch").exists()
        again = await asyncio.to_thread(run, "kubectl", "jobbatch", "--version")
        assert (again.returncode, again.stdout.strip(), again.stderr) == (0, f"kubectl-jobbatch {krew.VERSION[1:]}", "")

        # krew refuses to uninstall without a local index (`kubectl krew update` clones krew-index from
        # GitHub, out of reach here); an empty git repository stands in for it.
        await asyncio.to_thread(run, "git", "init", "-q", str(krew_root / "index" / "default"))
        removed = await asyncio.to_thread(run, "kubectl", "krew", "uninstall", "jobbatch")
        assert removed.returncode == 0, removed.stderr
        assert not venv.exists()
        assert not (krew_root / "bin" / "kubectl-jobbatch").exists()
    finally:
        server.shutdown()
        server.server_close()
