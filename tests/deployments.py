"""What the deployment tests share: a fresh clone, a deployment directory anyone may traverse, deploy.sh run for real."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.servers import ROOT, clean_environ

PM2_BIN = ROOT / ".tools" / "node_modules" / ".bin"
# As root (CI), deploy.sh creates this system user and the service runs as it, as ice-servers would.
TEST_APP_USER = "ice-servers-test"


def app_user() -> str:
    """Return the user the service runs as: TEST_APP_USER as root, else ourselves (who cannot create users)."""
    return TEST_APP_USER if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name


def deployment_dir(prefix: str) -> Path:
    """Make a directory the service's user can reach: pytest's temporary directories are private (0700)."""
    path = Path(tempfile.mkdtemp(prefix=f"ice-{prefix}-", dir="/tmp"))
    path.chmod(0o755)
    return path


def fresh_clone(source: Path) -> None:
    """Clone the repository as an operator would, with this working tree's files (committed or not) on top."""
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(source)], check=True)
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, (entry.decode() for entry in listed)):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)


def deploy(source: Path, app_dir: Path, manager: str = "none", *args: str, path: str | None = None, **env: str):
    """Run ``source``'s deploy/deploy.sh into ``app_dir``; return the completed process."""
    environ = {
        **clean_environ(),
        "PATH": path or f"{PM2_BIN}:{os.environ['PATH']}",
        "APP_DIR": str(app_dir),
        "APP_USER": app_user(),
        "SERVICE_MANAGER": manager,
        **env,
    }
    command = ["bash", str(source / "deploy" / "deploy.sh"), *args]
    return subprocess.run(command, cwd=source, env=environ, capture_output=True, text=True, timeout=600)


def release(app_dir: Path, link: str = "current") -> Path:
    """Return the release ``link`` (current, previous) points to."""
    return app_dir / os.readlink(app_dir / link)
