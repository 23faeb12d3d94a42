"""Build the pinned control-plane and CLI binaries from the Go module proxy.

These machines reach package registries only (no release downloads, no image
registry), so every binary the demo and the tests need is compiled from its Go
module at the version pinned in ``TOOLS`` below -- the one place versions live.
Binaries are cached outside the repository, keyed by tool and version, so only
the first run pays for the build (about 20 minutes on 2 cores, mostly
``k8s.io/kubernetes``).

Usage::

    python -m e2e.tools ensure         # build what is missing, print the bin dir
    python -m e2e.tools path           # print the bin dir without building
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

KUBERNETES_VERSION = "v1.35.4"
# Staging modules of k8s.io/kubernetes are published as k8s.io/<name> v0.X.Y.
_STAGING_VERSION = "v0." + KUBERNETES_VERSION.removeprefix("v1.")
_STAGING_MODULES = (
    "api", "apiextensions-apiserver", "apimachinery", "apiserver", "cli-runtime", "client-go",
    "cloud-provider", "cluster-bootstrap", "code-generator", "component-base", "component-helpers",
    "controller-manager", "cri-api", "cri-client", "csi-translation-lib", "dynamic-resource-allocation",
    "endpointslice", "externaljwt", "kms", "kube-aggregator", "kube-controller-manager", "kube-proxy",
    "kube-scheduler", "kubectl", "kubelet", "metrics", "mount-utils", "pod-security-admission", "sample-apiserver",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class GoTool:
    """A Go module whose main packages are built into named binaries."""

    key: str  # cache folder name; change it (with the version) to force a rebuild
    module: str
    version: str
    packages: dict[str, str]  # binary name -> main package path
    # Modules whose go.mod carries `replace` lines cannot be `go install`ed at a
    # version; they are built inside a throwaway wrapper module instead.
    wrapper_replaces: dict[str, str] = dataclasses.field(default_factory=dict)
    wrapper: bool = False
    # Linker -X flags (version stamping); bump `revision` when the recipe changes so caches rebuild.
    ldflags_x: dict[str, str] = dataclasses.field(default_factory=dict)
    revision: int = 1
    # A main package kept in this repository (its own go.mod, no dependencies), built from there.
    source: Path | None = None


# Built like the Kubernetes binaries: a wrapper module that pins every staging module, version-stamped.
_KUBERNETES_BUILD: dict[str, Any] = {
    "module": "k8s.io/kubernetes",
    "version": KUBERNETES_VERSION,
    "wrapper": True,
    "wrapper_replaces": {f"k8s.io/{m}": f"k8s.io/{m} {_STAGING_VERSION}" for m in _STAGING_MODULES},
    # Without these the binaries report v0.0.0-master, and version checks (helm's kubeVersion,
    # `kubectl version`, the kubelet's node status) see a wrong server.
    "ldflags_x": {
        f"{pkg}.{var}": value
        for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")
        for var, value in {
            "gitVersion": KUBERNETES_VERSION,
            "gitMajor": KUBERNETES_VERSION.split(".")[0].removeprefix("v"),
            "gitMinor": KUBERNETES_VERSION.split(".")[1],
            "gitTreeState": "clean",
        }.items()
    },
}

TOOLS: tuple[GoTool, ...] = (
    GoTool(
        key="kubernetes",
        packages={
            name: f"k8s.io/kubernetes/cmd/{name}"
            for name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
        },
        revision=2,
        **_KUBERNETES_BUILD,
    ),
    # The real node (e2e/realnode.py): kubelet, kube-proxy, crictl to clear its pods, the pause image's program.
    GoTool(key="kubelet", packages={"kubelet": "k8s.io/kubernetes/cmd/kubelet"}, **_KUBERNETES_BUILD),
    # Serves Services (the `kubernetes` one above all) to the real node's pods, in iptables mode.
    GoTool(key="kube-proxy", packages={"kube-proxy": "k8s.io/kubernetes/cmd/kube-proxy"}, **_KUBERNETES_BUILD),
    GoTool(
        key="cri-tools",
        module="sigs.k8s.io/cri-tools",
        version="v1.34.0",  # v1.35.0 is not on the module proxy; CRI v1 is the same
        packages={"crictl": "sigs.k8s.io/cri-tools/cmd/crictl"},
    ),
    # An S3 server over a local folder, for object-storage payloads (e2e/objectstore.py).
    GoTool(
        key="versitygw",
        module="github.com/versity/versitygw",
        version="v1.8.0",
        packages={"versitygw": "github.com/versity/versitygw/cmd/versitygw"},
    ),
    GoTool(
        key="pause",
        module="jobbatch.local/pause",
        version="v1",  # bump with e2e/pause/main.go
        packages={"pause": "."},
        source=Path(__file__).parent / "pause",
    ),
    GoTool(
        key="etcd",
        module="go.etcd.io/etcd/server/v3",
        version="v3.6.5",  # the etcd client version k8s.io/kubernetes v1.35 is built with
        packages={"etcd": "go.etcd.io/etcd/server/v3"},
        wrapper=True,
    ),
    GoTool(
        key="kwok",
        module="sigs.k8s.io/kwok",
        version="v0.8.0",
        packages={"kwok": "sigs.k8s.io/kwok/cmd/kwok"},
    ),
    # promtool checks and unit-tests the chart's alerting rules; prometheus scrapes a run for the
    # dashboard's picture (bench/dashboard.py). Built without the web UI: the HTTP API is all either needs.
    GoTool(
        key="prometheus",
        module="github.com/prometheus/prometheus",
        version="v0.316.0",  # Prometheus 3.x's Go module version
        packages={
            "promtool": "github.com/prometheus/prometheus/cmd/promtool",
            "prometheus": "github.com/prometheus/prometheus/cmd/prometheus",
        },
    ),
    # Validates `helm template` output against JSON Schemas (made from the API server's OpenAPI by
    # tests/integration/jsonschemas.py: kubeconform's own come from GitHub, out of reach here).
    GoTool(
        key="kubeconform",
        module="github.com/yannh/kubeconform",
        version="v0.8.0",
        packages={"kubeconform": "github.com/yannh/kubeconform/cmd/kubeconform"},
    ),
    # Checks and installs the `kubectl jobbatch` krew manifest and archive (e2e/krew.py) offline.
    GoTool(
        key="krew",
        module="sigs.k8s.io/krew",
        version="v0.4.3",
        packages={
            "krew": "sigs.k8s.io/krew/cmd/krew",
            "validate-krew-manifest": "sigs.k8s.io/krew/cmd/validate-krew-manifest",
        },
    ),
    GoTool(
        key="helm",
        module="helm.sh/helm/v3",
        version="v3.22.0",
        packages={"helm": "helm.sh/helm/v3/cmd/helm"},
    ),
)


def cache_dir() -> Path:
    """Where built binaries live: ``$JOBBATCH_CACHE_DIR`` or ``~/.cache/jobbatch``."""
    explicit = os.environ.get("JOBBATCH_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "jobbatch"


def bin_dir() -> Path:
    """One folder of symlinks to every pinned binary, for PATH."""
    return cache_dir() / "bin"


def _tool_dir(tool: GoTool) -> Path:
    suffix = f"-r{tool.revision}" if tool.revision > 1 else ""
    return cache_dir() / "tools" / f"{tool.key}-{tool.version}{suffix}"


def _is_built(tool: GoTool) -> bool:
    return all((_tool_dir(tool) / name).is_file() for name in tool.packages)


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("CGO_ENABLED", "0")
    env["GOFLAGS"] = "-mod=mod -buildvcs=false"
    env.setdefault("GOTOOLCHAIN", "local")
    return env


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=cwd, env=env, check=True)


def _build(tool: GoTool) -> None:
    if shutil.which("go") is None:
        raise SystemExit("go is not on PATH: it is needed once to build the control-plane binaries")
    out = _tool_dir(tool)
    staging = Path(tempfile.mkdtemp(prefix=f".{tool.key}-", dir=out.parent))
    env = _go_env()
    ldflags = ["-ldflags", " ".join(["-s", "-w", *(f"-X {k}={v}" for k, v in tool.ldflags_x.items())])]
    try:
        if tool.source is not None:
            for name, pkg in tool.packages.items():
                _run(["go", "build", *ldflags, "-o", str(staging / name), pkg], tool.source, env)
        elif tool.wrapper:
            lines = ["module jobbatch.local/build", "", "go 1.25.0", ""]
            lines += [f"require {tool.module} {tool.version}", ""]
            if tool.wrapper_replaces:
                lines.append("replace (")
                lines += [f"\t{old} => {new}" for old, new in tool.wrapper_replaces.items()]
                lines.append(")")
            (staging / "go.mod").write_text("\n".join(lines) + "\n")
            pkgs = list(tool.packages.values())
            _run(["go", "get", *(f"{p}@{tool.version}" for p in pkgs)], staging, env)
            for name, pkg in tool.packages.items():
                _run(["go", "build", *ldflags, "-o", str(staging / name), pkg], staging, env)
        else:
            env["GOBIN"] = str(staging)
            pkgs = [f"{p}@{tool.version}" for p in tool.packages.values()]
            _run(["go", "install", *ldflags, *pkgs], staging, env)
        out.mkdir(parents=True, exist_ok=True)
        for name in tool.packages:
            (staging / name).replace(out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def ensure(keys: list[str] | None = None) -> Path:
    """Build every missing pinned tool and refresh the symlinks in ``bin_dir()``."""
    (cache_dir() / "tools").mkdir(parents=True, exist_ok=True)
    bins = bin_dir()
    bins.mkdir(parents=True, exist_ok=True)
    for tool in TOOLS:
        if keys and tool.key not in keys:
            continue
        if not _is_built(tool):
            print(f"building {tool.module}@{tool.version} (cached in {_tool_dir(tool)})", flush=True)
            _build(tool)
        for name in tool.packages:
            link = bins / name
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(_tool_dir(tool) / name)
    return bins


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.tools", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_ensure = sub.add_parser("ensure", help="build missing tools, print the bin dir")
    p_ensure.add_argument("keys", nargs="*", help=f"subset of: {', '.join(t.key for t in TOOLS)}")
    sub.add_parser("path", help="print the bin dir")
    args = parser.parse_args(argv)
    if args.command == "ensure":
        print(ensure(args.keys or None))
    else:
        print(bin_dir())
    return 0


if __name__ == "__main__":
    sys.exit(main())
