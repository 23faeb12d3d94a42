"""The worker SDK is a distribution of its own (sdk/): a worker image installs it without the operator."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SDK = ROOT / "sdk"


def test_the_sdk_wheel_holds_the_sdk_alone_and_needs_only_pydantic(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(tmp_path), str(SDK)],
        check=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("jobbatch_worker-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        requires = [line for line in archive.read(metadata).decode().splitlines() if line.startswith("Requires-Dist")]
    package = sorted(n for n in names if not n.startswith("jobbatch_worker-"))
    # No jobbatch/__init__.py: `jobbatch` is a namespace package the operator's distribution shares.
    assert package == ["jobbatch/objectstore.py", "jobbatch/py.typed", "jobbatch/records.py", "jobbatch/worker.py"]
    assert requires == ["Requires-Dist: pydantic<3,>=2.10"]
    operator = (ROOT / "pyproject.toml").read_text()
    version = next(line for line in (SDK / "pyproject.toml").read_text().splitlines() if line.startswith("version"))
    assert f'"jobbatch-worker=={version.split(chr(34))[1]}"' in operator  # the operator requires this very SDK


def test_a_worker_runs_on_the_sdk_without_any_operator_module(tmp_path: Path) -> None:
    """With only sdk/ on the path for `jobbatch`, a worker reads its shard: no operator module, no kopf,
    no Kubernetes client is imported (what the example images, which install only the SDK, rely on)."""
    payload = tmp_path / "items.jsonl"
    payload.write_text("".join(json.dumps({"url": f"https://example.com/{i}"}) + "\n" for i in range(5)))
    env = {
        "JOBBATCH_NAME": "b", "JOBBATCH_NAMESPACE": "ns", "JOBBATCH_FIRST_SHARD": "1", "JOB_COMPLETION_INDEX": "1",
        "JOBBATCH_ATTEMPT": "0", "JOBBATCH_SHARD_COUNT": "3", "JOBBATCH_SHARD_SIZE": "2", "JOBBATCH_ITEM_COUNT": "5",
        "JOBBATCH_PAYLOAD_FILE": str(payload), "PATH": "/usr/bin:/bin",
    }  # fmt: skip
    script = f"""
import sys
sys.path = [p for p in sys.path if "jobbatch" not in p and not p.endswith(("/operator", "/sdk"))]
sys.meta_path = [f for f in sys.meta_path if "editable" not in type(f).__module__ + repr(f)]
sys.path_hooks = [h for h in sys.path_hooks if "editable" not in repr(h)]
sys.path_importer_cache.clear()
sys.path.insert(0, {str(SDK)!r})
from jobbatch import worker
print(list(worker.items()))
roots = ("jobbatch", "kopf", "kubernetes_asyncio", "prometheus_client")
loaded = sorted(m for m in sys.modules if m.split(".")[0] in roots)
print(loaded)
"""
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    items, loaded = out.stdout.splitlines()
    assert items == "[{'url': 'https://example.com/4'}]"  # shard 2 of a 5-item batch in shards of 2
    assert loaded == "['jobbatch', 'jobbatch.objectstore', 'jobbatch.records', 'jobbatch.worker']"
