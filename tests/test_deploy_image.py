"""The container: `deploy build-image` (docker missing, daemon down, build + ECR push with a recording stand-in for
docker), and the Dockerfile / .dockerignore SageMaker depends on."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from llmscratch.cli import main

ROOT = Path(__file__).resolve().parents[1]
REGION = "us-west-2"


def fake_docker(folder: Path, daemon: bool = True) -> Path:
    """A `docker` that records each call (arguments, and stdin for login) in calls.jsonl."""
    folder.mkdir(exist_ok=True)
    log = folder / "calls.jsonl"
    script = folder / "docker"
    script.write_text(f"""#!/usr/bin/env python3
import json, sys
args = sys.argv[1:]
stdin = sys.stdin.read() if args[:1] == ["login"] else None
with open({str(log)!r}, "a") as f:
    f.write(json.dumps({{"args": args, "stdin": stdin}}) + "\\n")
if args[:1] == ["info"] and not {daemon!r}:
    print("Cannot connect to the Docker daemon at unix:///var/run/docker.sock.", file=sys.stderr)
    sys.exit(1)
""")
    script.chmod(0o755)
    return log


def calls(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def error_of(argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    return err


def test_docker_missing_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))
    err = error_of(["deploy", "build-image", "--repository", "llmscratch", "--context", str(ROOT)], capsys)
    assert "docker is not installed" in err


def test_docker_daemon_down_is_one_line(tmp_path, monkeypatch, capsys):
    log = fake_docker(tmp_path / "bin", daemon=False)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    err = error_of(["deploy", "build-image", "--repository", "llmscratch", "--context", str(ROOT)], capsys)
    assert "Docker daemon is not running" in err
    assert [c["args"][0] for c in calls(log)] == ["info"]  # nothing built


def test_build_and_push_to_ecr(tmp_path, monkeypatch, capsys):
    moto = pytest.importorskip("moto")
    import boto3

    log = fake_docker(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    for var in [v for v in os.environ if v.startswith("AWS_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    with moto.mock_aws():
        main(["deploy", "build-image", "--repository", "llmscratch", "--tag", "v1", "--context", str(ROOT),
              "--push", "--region", REGION, "--base-image", "nvidia/cuda:12.8.1-runtime-ubuntu24.04",
              "--torch-index-url", "https://download.pytorch.org/whl/cu128"])
        repo = boto3.client("ecr", region_name=REGION).describe_repositories()["repositories"]
    uri = f"{repo[0]['repositoryUri']}:v1"
    assert [r["repositoryName"] for r in repo] == ["llmscratch"]  # created, as it was missing
    seen = calls(log)
    assert [c["args"][0] for c in seen] == ["info", "build", "login", "tag", "push"]
    assert seen[1]["args"] == ["build", "-t", "llmscratch:v1", "--build-arg",
                               "BASE_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04", "--build-arg",
                               "TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128", str(ROOT)]
    assert seen[2]["args"][:4] == ["login", "--username", "AWS", "--password-stdin"] and seen[2]["stdin"]
    assert seen[3]["args"] == ["tag", "llmscratch:v1", uri] and seen[4]["args"] == ["push", uri]
    assert capsys.readouterr().out.strip().endswith(f"image: {uri}")


def test_no_dockerfile_in_context(tmp_path, monkeypatch, capsys):
    fake_docker(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    err = error_of(["deploy", "build-image", "--repository", "x", "--context", str(tmp_path)], capsys)
    assert "no Dockerfile" in err


def test_dockerfile_has_what_sagemaker_needs():
    text = (ROOT / "Dockerfile").read_text()
    assert "LABEL com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true" in text
    entry = re.search(r"^ENTRYPOINT (.+)$", text, re.M).group(1)
    assert json.loads(entry) == ["/usr/local/bin/llmscratch-entrypoint"]  # exec form: signals reach the server
    assert json.loads(re.search(r"^CMD (.+)$", text, re.M).group(1)) == ["serve"]
    assert re.search(r"^ARG BASE_IMAGE=python:3\.\d+-slim$", text, re.M)
    assert "ARG TORCH_VERSION=2.13.0" in text and "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in text
    assert "src/llmscratch/deploy/entrypoint.sh /usr/local/bin/llmscratch-entrypoint" in text


def test_dockerignore_keeps_weights_and_runs_out():
    lines = (ROOT / ".dockerignore").read_text().split()
    assert lines[lines.index("*")] == "*" and {"!src/", "!pyproject.toml"} <= set(lines)
