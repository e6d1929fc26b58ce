"""The container image: `docker build` from the repository's Dockerfile, then (optionally) ECR login and push.

Docker is a program we call, not a library: when it is missing or its daemon is not running, a UserError says so
before anything else happens.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from llmscratch.deploy.config import BuildImageConfig
from llmscratch.utils import UserError


def docker_path() -> str:
    """The docker executable; UserError when Docker is not installed or its daemon does not answer."""
    docker = shutil.which("docker")
    if docker is None:
        raise UserError("docker is not installed (no `docker` on PATH): build the image on a machine with Docker, "
                        "or see docs/deploy.md for trying the container without it")
    try:
        info = subprocess.run([docker, "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True,
                              timeout=30)
    except subprocess.TimeoutExpired:
        raise UserError("the Docker daemon does not answer (docker info timed out): start Docker and retry") from None
    if info.returncode != 0:
        raise UserError("the Docker daemon is not running (docker info failed): start Docker (e.g. `sudo systemctl "
                        "start docker` or Docker Desktop) and retry")
    return docker


def build_args(cfg: BuildImageConfig, tag: str) -> list[str]:
    """The `docker build` arguments (after the executable)."""
    context = Path(cfg.context).expanduser()
    if not (context / "Dockerfile").is_file():
        raise UserError(f"no Dockerfile in {context}: pass context=DIR, the llmscratch repository root",
                        params="context")
    args = ["build", "-t", tag]
    if cfg.base_image:
        args += ["--build-arg", f"BASE_IMAGE={cfg.base_image}"]
    if cfg.torch_index_url:
        args += ["--build-arg", f"TORCH_INDEX_URL={cfg.torch_index_url}"]
    return [*args, str(context)]


def ecr_login(sess, docker: str, repository: str) -> str:
    """Make sure the ECR repository exists, log docker in to its registry; returns the repository URI."""
    import botocore.exceptions as bx

    from llmscratch.deploy.aws import aws_errors, error_code

    ecr = sess.client("ecr")
    with aws_errors(f"finding the ECR repository {repository}"):
        try:
            repo = ecr.describe_repositories(repositoryNames=[repository])["repositories"][0]
        except bx.ClientError as e:
            if error_code(e) != "RepositoryNotFoundException":
                raise
            repo = ecr.create_repository(repositoryName=repository)["repository"]
    with aws_errors("getting an ECR login token"):
        auth = ecr.get_authorization_token()["authorizationData"][0]
    user, password = base64.b64decode(auth["authorizationToken"]).decode().split(":", 1)
    registry = auth["proxyEndpoint"].removeprefix("https://").removeprefix("http://")
    run([docker, "login", "--username", user, "--password-stdin", registry], stdin=password)
    return repo["repositoryUri"]


def run(cmd: list[str], stdin: str | None = None) -> None:
    """Run a docker command, its output shown; UserError naming it when it fails."""
    done = subprocess.run(cmd, input=stdin, text=True)
    if done.returncode != 0:
        shown = " ".join(cmd[:2])
        raise UserError(f"`{shown} ...` failed with exit status {done.returncode} (its output is above)")


def build_image(cfg: BuildImageConfig, say: Callable[[str], None] = print) -> str:
    """Build the image (and push it with cfg.push); returns the image's name (its ECR URI when pushed)."""
    if not cfg.repository or any(c.isspace() for c in cfg.repository):
        raise UserError(f"repository name {cfg.repository!r} is not valid")
    docker = docker_path()
    local = f"{cfg.repository}:{cfg.tag}"
    run([docker, *build_args(cfg, local)])
    say(f"built {local}")
    if not cfg.push:
        return local
    from llmscratch.deploy.aws import aws_errors, session

    with aws_errors("pushing to ECR"):
        uri = f"{ecr_login(session(cfg.region), docker, cfg.repository)}:{cfg.tag}"
    run([docker, "tag", local, uri])
    run([docker, "push", uri])
    say(f"pushed {uri}")
    return uri
