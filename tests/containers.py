"""The image for the tests, built with Debian's podman from a Debian base made on this machine.

No image registry can be reached here, so the base is made the way the official slim image is:
`mmdebstrap --variant=minbase bookworm` with merged /usr, without docs, man pages, locales, apt
lists or caches, and apt told to keep none (the official image's docker-clean). The tarball is
cached under .tools/ and imported as docker.io/library/debian:bookworm-slim; the Dockerfile is
built with --pull=never against it. pip inside the build reaches the package index with this
machine's CA bundle, mounted with a pip.conf for the build only: the Dockerfile stays as anyone
would write it.

podman 4.3 runs here as root with runc and cgroupfs, on the host's network, with explicit ulimits.
"""

from __future__ import annotations

import json
import subprocess
import tarfile
from pathlib import Path

from tests.servers import ROOT

BASE_IMAGE = "docker.io/library/debian:bookworm-slim"
BASE_TARBALL = ROOT / ".tools" / "debian-bookworm-slim.tar"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
PODMAN = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]
RUN_OPTIONS = ["--network", "host", "--ulimit", "nofile=20000:20000", "--ulimit", "nproc=4096:4096"]
# As the official image's /etc/apt/apt.conf.d/docker-*: no .deb, cache or translation kept.
_REMOVE = "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"
APT_CLEAN = (
    f'DPkg::Post-Invoke {{ "{_REMOVE}"; }};\nAPT::Update::Post-Invoke {{ "{_REMOVE}"; }};\n'
    'Dir::Cache::pkgcache "";\nDir::Cache::srcpkgcache "";\nAcquire::Languages "none";\n'
)
SLIM = [f"--dpkgopt=path-exclude=/usr/share/{part}/*" for part in ("man", "doc", "locale", "info")] + [
    "--dpkgopt=path-include=/usr/share/doc/*/copyright"
]


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    """Run podman with this machine's runtime options; return the finished process (text); ``check``: fail with its stderr."""
    done = subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if "level=error" not in line or "healthcheck" not in line]
        raise RuntimeError(f"podman {args[0]} exited {done.returncode}: {' / '.join(errors[-3:])}")
    return done


def ensure_base() -> None:
    """Make the Debian base (cached in .tools/) and import it as debian:bookworm-slim, unless podman has it."""
    if podman("image", "exists", BASE_IMAGE, check=False).returncode == 0:
        return
    if not BASE_TARBALL.exists():
        BASE_TARBALL.parent.mkdir(exist_ok=True)
        partial = BASE_TARBALL.with_suffix(".partial.tar")
        hooks = [
            f"--customize-hook=printf '%s' '{APT_CLEAN}' > \"$1/etc/apt/apt.conf.d/docker-clean\"",
            '--customize-hook=rm -f "$1"/var/cache/apt/*.bin',
        ]
        subprocess.run(
            ["mmdebstrap", "--quiet", "--variant=minbase", "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr", *SLIM, *hooks]
            + ["bookworm", str(partial)],
            check=True,
            capture_output=True,
            timeout=600,
        )
        partial.rename(BASE_TARBALL)
    podman("import", str(BASE_TARBALL), BASE_IMAGE, timeout=300)


def build(context: Path, tag: str, workdir: Path) -> subprocess.CompletedProcess:
    """Build the Dockerfile in ``context`` as ``tag`` (the docker format keeps HEALTHCHECK)."""
    ensure_base()
    pip_conf = workdir / "pip.conf"
    pip_conf.write_text("[global]\ncert = /run/host-ca.crt\n")
    mounts = ["-v", f"{CA_BUNDLE}:/run/host-ca.crt:ro", "-v", f"{pip_conf}:/etc/pip.conf:ro"]
    return podman("build", "--format", "docker", "--pull=never", *RUN_OPTIONS, *mounts, "-t", tag, str(context), timeout=900)


def inspect(name: str) -> dict:
    """Return podman's inspection of an image or a container."""
    return json.loads(podman("inspect", name).stdout)[0]


def image_files(tag: str, workdir: Path) -> tarfile.TarFile:
    """Return the image's whole filesystem as a tar (exported from a container that never runs)."""
    container = podman("create", tag).stdout.strip()
    try:
        exported = workdir / "image.tar"
        podman("export", "-o", str(exported), container, timeout=300)
    finally:
        podman("rm", container, check=False)
    return tarfile.open(exported)


def copy_context(destination: Path) -> Path:
    """Copy the files git knows (as a clone has them) to ``destination``: a build context of its own."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, check=True
    )
    for name in files.stdout.decode().split("\0"):
        source = ROOT / name
        if name and source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
    return destination
