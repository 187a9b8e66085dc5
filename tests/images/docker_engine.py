"""A Docker engine and a locally made base image for the image tests (no registry is reachable).

- The engine: the one DOCKER_HOST (or the default socket) answers on, else `dockerd` started here with
  `--iptables=false --bridge=none` (only `--network host|none` then), its data root in the cache
  directory so layers are reused across runs.
- The base image: Debian bookworm with python3 + venv, made by `debootstrap` (with this machine's CA
  bundle, since outbound HTTPS may be re-signed by a local CA), saved as a tarball keyed by a hash of
  its recipe, imported with `docker import`.

The cache directory is ``$MILI_IMAGES_CACHE`` (default ``~/.cache/mili-images``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import tomllib

from mili_testing import stop_process

DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def cache_dir() -> Path:
    path = Path(os.environ.get("MILI_IMAGES_CACHE") or Path.home() / ".cache" / "mili-images")
    path.mkdir(parents=True, exist_ok=True)
    return path


class DockerEngine:
    """The `docker` CLI bound to one daemon; ``started`` when this process launched that daemon."""

    def __init__(self, docker: str, host: str, process: subprocess.Popen[bytes] | None = None) -> None:
        self.docker = docker
        self.env = {**os.environ, "DOCKER_HOST": host, "DOCKER_BUILDKIT": "0"}  # the classic builder
        self.process = process

    def run(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.docker, *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"docker {' '.join(args[:3])} ... failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
        return result

    def answers(self) -> bool:
        try:
            return (
                self.run("version", "--format", "{{.Server.Version}}", timeout=20, check=False).returncode
                == 0
            )
        except subprocess.TimeoutExpired:
            return False

    def has_image(self, tag: str) -> bool:
        return self.run("image", "inspect", tag, check=False).returncode == 0

    def stop(self) -> None:
        """Stop the daemon if this process started it."""
        stop_process(self.process, grace=30)


def connect_or_start(docker: str, dockerd: str | None, timeout: float = 60) -> DockerEngine:
    """A Docker engine that answers: the configured one, or a `dockerd` started on a socket here."""
    configured = DockerEngine(docker, os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock")
    if configured.answers():
        return configured
    if dockerd is None:
        raise RuntimeError("no Docker daemon answers and dockerd is not installed")
    state = cache_dir() / "engine"
    state.mkdir(exist_ok=True)
    host = f"unix://{state / 'docker.sock'}"
    ours = DockerEngine(docker, host)
    if ours.answers():  # left running by an earlier session
        return ours
    (state / "docker.pid").unlink(missing_ok=True)
    command = [
        dockerd,
        "--iptables=false",
        "--bridge=none",
        f"--data-root={state / 'data'}",
        # Short and fixed: containerd's sockets live here (socket paths are limited to 107 bytes).
        f"--exec-root={Path(tempfile.gettempdir()) / f'mili-dx-{os.getuid()}'}",
        f"--pidfile={state / 'docker.pid'}",
        f"--host={host}",
    ]
    with (state / "dockerd.log").open("ab") as log:
        ours.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while not ours.answers():
        if ours.process.poll() is not None or time.monotonic() > deadline:
            ours.stop()
            raise RuntimeError(f"dockerd did not start:\n{(state / 'dockerd.log').read_text()[-3000:]}")
        time.sleep(0.5)
    return ours


def base_image_recipe() -> str:
    """Everything the base image depends on; its hash names the cached tarball and the tag."""
    ca = hashlib.sha256(CA_BUNDLE.read_bytes()).hexdigest() if CA_BUNDLE.exists() else "none"
    return f"debootstrap minbase {DEBIAN_SUITE} {DEBIAN_MIRROR} {','.join(BASE_PACKAGES)} ca={ca}"


def ensure_base_image(engine: DockerEngine, debootstrap: str | None) -> str:
    """Tag of the local Debian+Python base image, made (or loaded from the cache) when missing."""
    key = hashlib.sha256(base_image_recipe().encode()).hexdigest()[:12]
    tag = f"local/mili-base:{DEBIAN_SUITE}-{key}"
    if engine.has_image(tag):
        return tag
    tarball = cache_dir() / f"base-{DEBIAN_SUITE}-{key}.tar"
    if not tarball.exists():
        if debootstrap is None:
            raise RuntimeError("debootstrap is not installed (apt-get install debootstrap)")
        _debootstrap(debootstrap, tarball)
    engine.run("import", str(tarball), tag)
    return tag


def _debootstrap(debootstrap: str, tarball: Path) -> None:
    root = Path(tempfile.mkdtemp(prefix="rootfs-", dir=cache_dir()))
    try:
        subprocess.run(
            [
                debootstrap,
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                DEBIAN_SUITE,
                str(root),
                DEBIAN_MIRROR,
            ],
            check=True,
            capture_output=True,
            timeout=900,
        )
        if CA_BUNDLE.exists():  # pip inside builds must trust this machine's HTTPS (re-signing proxy)
            shutil.copyfile(CA_BUNDLE, root / "etc/ssl/certs/ca-certificates.crt")
        staging = tarball.with_suffix(".partial")
        subprocess.run(["tar", "-C", str(root), "-cf", str(staging), "."], check=True, timeout=600)
        os.replace(staging, tarball)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def package_folders(repo: Path) -> list[str]:
    """The folders pyproject.toml maps packages onto (worker, kernels, operator, common, ...)."""
    config = tomllib.loads((repo / "pyproject.toml").read_text())
    return sorted(set(config["tool"]["setuptools"]["package-dir"].values()))


def make_build_context(repo: Path, target: Path, wheel_dir: Path | None, python_tag: str) -> Path:
    """A build context with the repository's image inputs and, when given, the CPU torch wheel for
    ``python_tag`` (e.g. cp311) in wheels/ (Dockerfile.worker installs torch from there)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.so")
    for name in ("pyproject.toml", "README.md", "Dockerfile.worker", "Dockerfile.operator", ".dockerignore"):
        shutil.copy2(repo / name, target / name)
    for name in package_folders(repo):
        shutil.copytree(repo / name, target / name, ignore=ignore)
    if wheel_dir is not None:
        wheels = sorted(wheel_dir.glob(f"torch-*+cpu-{python_tag}-{python_tag}-*.whl"))
        if not wheels:
            raise RuntimeError(f"no CPU torch wheel for {python_tag} in {wheel_dir}")
        (target / "wheels").mkdir()
        try:
            os.link(wheels[-1], target / "wheels" / wheels[-1].name)
        except OSError:
            shutil.copy2(wheels[-1], target / "wheels" / wheels[-1].name)
    return target
