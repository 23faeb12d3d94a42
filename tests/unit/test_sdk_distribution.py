"""The worker SDK is a distribution of its own (sdk/): a worker image installs it without the operator."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from e2e import images

ROOT = Path(__file__).resolve().parents[2]
SDK = ROOT / "sdk"


def _contents(wheel: Path) -> tuple[list[str], list[str]]:
    """(package files, Requires-Dist lines) of a wheel."""
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        requires = [line for line in archive.read(metadata).decode().splitlines() if line.startswith("Requires-Dist")]
    return sorted(n for n in names if n.startswith("jobbatch/")), requires


def test_the_two_wheels_split_the_package_and_the_sdk_needs_only_pydantic(tmp_path: Path) -> None:
    """Built as images and krew build them (offline, from clean copies); a stale build/ in the checkout
    (as an earlier build leaves it) must not bring the SDK's modules back into the operator's wheel."""
    build = ROOT / "build"
    existed = build.exists()
    stale = build / "lib" / "jobbatch" / "worker.py"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_text("raise ImportError('a stale build/ reached the wheel')\n")
    try:
        images.build_wheels(tmp_path, deps=False)
    finally:  # build/ is ignored by git; only what this test put there goes
        shutil.rmtree(build) if not existed else stale.unlink()
    (sdk_wheel,) = tmp_path.glob("jobbatch_worker-*.whl")
    (operator_wheel,) = tmp_path.glob("jobbatch_operator-*.whl")
    sdk_files, sdk_requires = _contents(sdk_wheel)
    # No jobbatch/__init__.py: `jobbatch` is a namespace package the two distributions share.
    assert sdk_files == ["jobbatch/objectstore.py", "jobbatch/py.typed", "jobbatch/records.py", "jobbatch/worker.py"]
    assert sdk_requires == ["Requires-Dist: pydantic<3,>=2.10"]
    operator_files, operator_requires = _contents(operator_wheel)
    assert not set(operator_files) & {*sdk_files, "jobbatch/__init__.py"}
    assert "jobbatch/api.py" in operator_files
    version = next(line for line in (SDK / "pyproject.toml").read_text().splitlines() if line.startswith("version"))
    assert f"Requires-Dist: jobbatch-worker=={version.split(chr(34))[1]}" in operator_requires
    # The same sources make the same bytes (krew's manifest pins the archive's SHA-256).
    again = tmp_path / "again"
    images.build_wheels(again, deps=False)
    for wheel in (sdk_wheel, operator_wheel):
        assert (again / wheel.name).read_bytes() == wheel.read_bytes()


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
