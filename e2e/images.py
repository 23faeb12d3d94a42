"""Container images built on this machine, with no registry and no Docker.

No image registry is reachable here, so the images the real node runs are made from
parts that are: a Debian root filesystem from ``debootstrap`` (Debian's mirror), the
project's wheels (PyPI), and the pause program (built from ``e2e/pause``).
Each image is written as a docker-archive tar (``manifest.json``, a config, uncompressed
layer tars) that ``ctr images import`` and ``docker load`` both read, and cached in
``~/.cache/jobbatch/images`` keyed by what went into it, so a source change rebuilds and
nothing else does.

- ``jobbatch-operator:0.1.0`` and ``jobbatch-example-worker:0.1.0``: the same two layers as
  ``images/*.Dockerfile`` (a Debian base with python3, then a venv with the package);
- ``jobbatch-import-worker:0.1.0``: the import pipeline's worker (examples/06-import), with pg8000;
- ``jobbatch.local/pause:1``: containerd's ``sandbox_image`` on the real node.

Usage::

    python -m e2e.images build        # build what is missing, print the archives
    python -m e2e.images build --load # ... and ``docker load`` them, when Docker is there
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterable
from pathlib import Path

from e2e import tools

REPO = Path(__file__).resolve().parents[1]
TAG = "0.1.0"  # the package's version; images/build.sh and every example use it
DEBIAN_SUITE = "bookworm"
# tini is every image's PID 1: a process that is PID 1 ignores a SIGTERM it has no handler for, so a
# worker stopped while Python starts (before the SDK's handler exists) would run on to its end.
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates", "tini")
INIT = ("/usr/bin/tini", "--")
# Bump when a recipe below changes, so cached archives are rebuilt.
RECIPE_REVISION = 1
PAUSE_IMAGE = "jobbatch.local/pause:1"
ENV_PATH = "/opt/jobbatch/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclasses.dataclass(frozen=True)
class AppImage:
    """An image of the package on the Debian base: a venv in /opt/jobbatch, plus files."""

    repository: str
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...] = ()
    files: dict[str, str] = dataclasses.field(default_factory=dict)  # path in image -> path in repo
    ports: tuple[int, ...] = ()
    requirements: tuple[str, ...] = ()  # more PyPI packages in the venv (pinned)
    # The distribution installed: the whole operator, or only the worker SDK (sdk/: pydantic, no kopf).
    distribution: str = "jobbatch-operator"

    @property
    def ref(self) -> str:
        return f"{self.repository}:{TAG}"


OPERATOR = AppImage("jobbatch-operator", entrypoint=(*INIT, "jobbatch"), cmd=("run",), ports=(8080, 8081))
EXAMPLE_WORKER = AppImage(
    "jobbatch-example-worker",
    entrypoint=(*INIT, "python", "/app/worker.py"),
    files={"/app/worker.py": "examples/worker/worker.py"},
    distribution="jobbatch-worker",
)
IMPORT_WORKER = AppImage(
    "jobbatch-import-worker",
    entrypoint=(*INIT, "python", "/app/worker.py"),
    files={"/app/worker.py": "examples/06-import/worker.py"},
    requirements=("pg8000==1.31.6",),  # pure Python: no compiler, no libpq in the image
    distribution="jobbatch-worker",
)
APP_IMAGES = (OPERATOR, EXAMPLE_WORKER, IMPORT_WORKER)


def images_dir() -> Path:
    return tools.cache_dir() / "images"


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# The chroot sees none of the host's pip settings (PIP_FIND_LINKS and the like).
_CHROOT_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}


def _run(cmd: list[str], **kwargs: object) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, **kwargs)  # type: ignore[call-overload]


def _replace_cached(final: Path, built: Path) -> None:
    """Move ``built`` into place and drop older archives of the same image."""
    stem = final.name.rsplit("-", 1)[0]
    for old in final.parent.glob(f"{stem}-*.tar"):
        if old != final:
            old.unlink()
    built.replace(final)


def write_archive(out: Path, ref: str, layers: list[Path], config: dict[str, object]) -> None:
    """A docker-archive tar of uncompressed ``layers`` (bottom first) tagged ``ref``."""
    diff_ids = [_sha256_file(layer) for layer in layers]
    image_config = {
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{d}" for d in diff_ids]},
        "history": [{"created_by": "e2e/images.py"} for _ in layers],
    }
    config_bytes = json.dumps(image_config, sort_keys=True).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    manifest = [{"Config": config_name, "RepoTags": [ref], "Layers": [f"{d}/layer.tar" for d in diff_ids]}]
    tmp = out.with_suffix(".partial")
    with tarfile.open(tmp, "w") as archive:
        for layer, digest in zip(layers, diff_ids, strict=True):
            archive.add(layer, arcname=f"{digest}/layer.tar")
        for name, data in ((config_name, config_bytes), ("manifest.json", json.dumps(manifest).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    tmp.replace(out)


# -- the Debian base layer ------------------------------------------------------------
def base_layer() -> Path:
    """The Debian root filesystem with python3, as one layer tar (debootstrap, about a minute)."""
    key = hashlib.sha256(f"{DEBIAN_SUITE}:{','.join(BASE_PACKAGES)}:{RECIPE_REVISION}".encode()).hexdigest()[:12]
    out = images_dir() / f"base-{DEBIAN_SUITE}-{key}.tar"
    if out.exists():
        return out
    _need("debootstrap", "debootstrap")
    images_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=images_dir()) as tmp:
        rootfs = Path(tmp) / "rootfs"
        _run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                DEBIAN_SUITE,
                str(rootfs),
            ],
            stdout=subprocess.DEVNULL,
        )
        # What an image needs no copy of: package caches, docs, the host's resolver settings.
        for rel in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man", "usr/share/info"):
            shutil.rmtree(rootfs / rel, ignore_errors=True)
            (rootfs / rel).mkdir(parents=True, exist_ok=True)
        built = Path(tmp) / "layer.tar"
        _tar(rootfs, ["."], built)
        _replace_cached(out, built)
    return out


def _tar(root: Path, paths: Iterable[str], out: Path) -> None:
    _run(["tar", "--numeric-owner", "--xattrs", "-C", str(root), "-cf", str(out), *paths])


def _need(command: str, package: str) -> None:
    if shutil.which(command) is None:
        _run(["apt-get", "install", "-y", "-qq", package], stdout=subprocess.DEVNULL)


# -- the package's images ---------------------------------------------------------------
def _source_key(image: AppImage, base: Path) -> str:
    """Hash of everything that goes into an app image's own layer."""
    digest = hashlib.sha256(f"{RECIPE_REVISION}:{base.name}:{image}".encode())
    sources = [REPO / "pyproject.toml", *sorted((REPO / "operator" / "jobbatch").rglob("*"))]
    sources += [REPO / "sdk" / "pyproject.toml", *sorted((REPO / "sdk" / "jobbatch").rglob("*"))]
    sources += [REPO / rel for rel in image.files.values()]
    for path in sources:
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(REPO)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def app_image(image: AppImage, wheels: Path | None = None) -> Path:
    """The archive of ``image``: the base layer, then /opt/jobbatch (and its files)."""
    base = base_layer()
    out = images_dir() / f"{image.repository}-{_source_key(image, base)}.tar"
    if out.exists():
        return out
    with tempfile.TemporaryDirectory(dir=images_dir()) as tmp:
        work = Path(tmp)
        if wheels is None:
            wheels = image_wheels(work / "wheels")
        rootfs = work / "rootfs"
        rootfs.mkdir()
        _run(["tar", "--numeric-owner", "-C", str(rootfs), "-xf", str(base)])
        shutil.copytree(wheels, rootfs / "wheels")
        # Debian's python3 inside the base makes the venv, as the Dockerfile's build stage does.
        _run(["chroot", str(rootfs), "python3", "-m", "venv", "/opt/jobbatch"], env=_CHROOT_ENV)
        _run(
            [
                "chroot",
                str(rootfs),
                "/opt/jobbatch/bin/pip",
                "install",
                "--quiet",
                "--no-cache-dir",
                "--no-index",
                "--find-links",
                "/wheels",
                image.distribution,
                *image.requirements,
            ],
            env=_CHROOT_ENV,
        )
        added = ["opt/jobbatch"]
        for dest, src in image.files.items():
            target = rootfs / dest.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(REPO / src, target)
            target.chmod(0o644)
            added.append(dest.lstrip("/").split("/")[0])
        layer = work / "layer.tar"
        _tar(rootfs, sorted(set(added)), layer)
        config: dict[str, object] = {
            "Env": [f"PATH={ENV_PATH}", "PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1"],
            "Entrypoint": list(image.entrypoint),
            "Cmd": list(image.cmd),
            "User": "65532:65532",
            "WorkingDir": "/",
            "ExposedPorts": {f"{p}/tcp": {} for p in image.ports},
        }
        built = work / "image.tar"
        write_archive(built, image.ref, [base, layer], config)
        _replace_cached(out, built)
    return out


# Fixed zip timestamps in the wheels (the wheel package reads it): the same sources, the same bytes.
SOURCE_DATE_EPOCH = 315532800  # 1980-01-01, the earliest a zip entry can carry
_BUILT = shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__", "*.pyc")


def clean_projects(into: Path) -> list[Path]:
    """Copies of the two projects (operator, then SDK) holding only what their wheels are built from.

    Building in the checkout would reuse whatever an earlier build left in ``build/`` (setuptools never
    clears it: a wheel made after the SDK moved out still carried the old modules). Files get fixed
    modes, so a umask does not change the wheels either.
    """
    operator, sdk = into / "jobbatch-operator", into / "jobbatch-worker"
    operator.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copyfile(REPO / name, operator / name)
    shutil.copytree(REPO / "operator", operator / "operator", ignore=_BUILT)
    shutil.copytree(REPO / "sdk", sdk, ignore=_BUILT)
    shutil.copyfile(REPO / "LICENSE", sdk / "LICENSE")
    for path in (operator, sdk):
        for item in path.rglob("*"):
            item.chmod(0o755 if item.is_dir() else 0o644)
    return [operator, sdk]


def build_wheels(into: Path, extra: Iterable[str] = (), *, deps: bool = True) -> Path:
    """Wheels of both distributions (and, with ``deps``, of ``extra`` and every dependency), into ``into``.

    Built with the pinned setuptools of the dev environment (no build isolation: nothing fetched for
    the build itself), from clean copies; made on the host (the same CPython minor as the images' base).
    """
    into.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(SOURCE_DATE_EPOCH)}
    with tempfile.TemporaryDirectory() as tmp:
        projects = [str(p) for p in clean_projects(Path(tmp))]  # the operator requires the SDK: built here
        pip = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-build-isolation", "--wheel-dir", str(into)]
        _run([*pip, *([] if deps else ["--no-deps"]), *projects, *extra], env=env)
    return into


def image_wheels(into: Path) -> Path:
    """The wheels every image installs from: both distributions, the images' extra requirements, deps."""
    return build_wheels(into, sorted({r for image in APP_IMAGES for r in image.requirements}))


def pause_image() -> Path:
    """The sandbox image: the static pause program alone."""
    binary = tools.ensure(["pause"]) / "pause"
    key = _sha256_file(binary.resolve())[:12]
    out = images_dir() / f"pause-{key}.tar"
    if out.exists():
        return out
    images_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=images_dir()) as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        shutil.copyfile(binary, root / "pause")
        (root / "pause").chmod(0o755)
        layer = Path(tmp) / "layer.tar"
        _tar(root, ["pause"], layer)
        built = Path(tmp) / "image.tar"
        write_archive(built, PAUSE_IMAGE, [layer], {"Entrypoint": ["/pause"], "User": "65535:65535"})
        _replace_cached(out, built)
    return out


def build_all() -> list[Path]:
    """Every image's archive, building what is missing (the wheels at most once)."""
    archives = [pause_image()]
    base = base_layer()
    missing = [i for i in APP_IMAGES if not (images_dir() / f"{i.repository}-{_source_key(i, base)}.tar").exists()]
    with tempfile.TemporaryDirectory(dir=images_dir()) as tmp:
        wheels = image_wheels(Path(tmp) / "wheels") if missing else None
        archives += [app_image(image, wheels) for image in APP_IMAGES]
    return archives


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.images", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_build = sub.add_parser("build", help="build missing images, print their archives")
    p_build.add_argument("--load", action="store_true", help="docker load the archives too")
    p_req = sub.add_parser("requirements", help="print an image's extra PyPI pins (images/build.sh reads them)")
    p_req.add_argument("repository", choices=[i.repository for i in APP_IMAGES])
    args = parser.parse_args(argv)
    if args.command == "requirements":
        print(" ".join(next(i for i in APP_IMAGES if i.repository == args.repository).requirements))
        return 0
    if os.geteuid() != 0:
        print("building images needs root (debootstrap, chroot)", file=sys.stderr)
        return 1
    archives = build_all()
    for archive in archives:
        print(archive)
        if args.load:
            _run(["docker", "load", "-i", str(archive)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
