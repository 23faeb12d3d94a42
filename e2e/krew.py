"""Package ``kubectl jobbatch`` for krew: the release archive and its manifest.

The archive holds the launcher (``plugins/krew/kubectl-jobbatch``), the wheels of both distributions
(the plugin is in jobbatch-operator, which requires jobbatch-worker), the versions of their
dependencies tested here (``constraints.txt``) and the LICENSE; the manifest is
``plugins/krew/jobbatch.yaml`` with the version, the archive's URL and SHA-256 filled in. Upload the
archive to the release and send the manifest to krew-index::

    python -m e2e.krew --homepage https://github.com/ORG/jobbatch-operator \\
        --uri https://github.com/ORG/jobbatch-operator/releases/download/v0.1.0/kubectl-jobbatch-v0.1.0.tar.gz
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.metadata
import io
import string
import tarfile
import tempfile
from pathlib import Path

from e2e import images
from jobbatch.version import __version__

REPO = Path(__file__).resolve().parents[1]
PLUGIN = REPO / "plugins" / "krew"
VERSION = f"v{__version__}"  # krew wants semver with its `v`
ARCHIVE = f"kubectl-jobbatch-{VERSION}.tar.gz"


def build_archive(out_dir: Path) -> Path:
    """``out_dir/kubectl-jobbatch-vX.Y.Z.tar.gz``, from the working tree."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        wheels = images.build_wheels(Path(tmp) / "wheels", deps=False)
        constraints = Path(tmp) / "constraints.txt"
        constraints.write_text(_constraints())
        members = [
            ("kubectl-jobbatch", PLUGIN / "kubectl-jobbatch", 0o755),
            ("LICENSE", REPO / "LICENSE", 0o644),
            ("constraints.txt", constraints, 0o644),
        ]
        members += [(f"wheels/{w.name}", w, 0o644) for w in sorted(wheels.glob("*.whl"))]
        archive = out_dir / ARCHIVE
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for name, path, mode in members:
                info = tarfile.TarInfo(name)
                data = path.read_bytes()
                info.size, info.mode, info.mtime = len(data), mode, images.SOURCE_DATE_EPOCH
                tar.addfile(info, io.BytesIO(data))
        archive.write_bytes(gzip.compress(buffer.getvalue(), mtime=0))  # no time in the gzip header either
    return archive


def _constraints() -> str:
    """The versions tested here of everything the plugin may install (pip ignores the lines it does not need),
    so a first run a year later installs what was released, not whatever is newest."""
    pins = sorted(
        f"{dist.metadata['Name']}=={dist.version}"
        for dist in importlib.metadata.distributions()
        if not dist.metadata["Name"].lower().startswith("jobbatch")
    )
    return "\n".join(sorted(set(pins), key=str.lower)) + "\n"


def manifest(*, uri: str, sha256: str, homepage: str) -> str:
    """The krew-index manifest for the archive at ``uri``."""
    template = string.Template((PLUGIN / "jobbatch.yaml").read_text())
    return template.substitute(version=VERSION, uri=uri, sha256=sha256, homepage=homepage)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.krew", description=__doc__.split("\n")[0])
    parser.add_argument("--uri", required=True, help=f"where the release will serve {ARCHIVE}")
    parser.add_argument("--homepage", required=True, help="the project's home page")
    parser.add_argument("--out", type=Path, default=REPO / "dist", help="output folder (default: dist/)")
    args = parser.parse_args(argv)
    archive = build_archive(args.out)
    plugin_manifest = args.out / "jobbatch.yaml"
    plugin_manifest.write_text(manifest(uri=args.uri, sha256=sha256_of(archive), homepage=args.homepage))
    print(archive)
    print(plugin_manifest)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
