"""The deploy commands as a user runs them, against moto's stand-alone server on loopback, reached the way the
real CLI reaches a local endpoint: AWS_ENDPOINT_URL. Fake credentials and region are set for these tests only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import boto3
import pytest
import torch

from llmscratch.deploy.config import PackageConfig
from llmscratch.deploy.package import package_model
from llmscratch.model import GPTConfig, build_model
from llmscratch.tokenizer import Tokenizer
from llmscratch.weights.ours import save_pretrained

moto_server = pytest.importorskip("moto.server")
REGION = "us-east-1"
ACCOUNT = "123456789012"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/sm"
IMAGE = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/llmscratch:1"


@pytest.fixture(scope="module")
def endpoint_url():
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def env(endpoint_url, tmp_path):
    """The environment of a user whose AWS CLI and SDKs point at the local server."""
    urllib.request.urlopen(urllib.request.Request(f"{endpoint_url}/moto-api/reset", method="POST")).read()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ENDPOINT_URL=endpoint_url, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
               AWS_DEFAULT_REGION=REGION, AWS_CONFIG_FILE=str(tmp_path / "none"),
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"), PYTHONPATH=str(Path(__file__).parents[1] / "src"))
    return env


def client(env, name):
    return boto3.client(name, endpoint_url=env["AWS_ENDPOINT_URL"], region_name=REGION, aws_access_key_id="testing",
                        aws_secret_access_key="testing")


def llmscratch(env, *args):
    return subprocess.run([sys.executable, "-m", "llmscratch", *args], env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("server-archive")
    tok = Tokenizer({i: bytes([i]) for i in range(256)}, [], {"<|endoftext|>": 256}, eos_id=256)
    model = build_model(GPTConfig(vocab_size=257, context_length=32, emb_dim=16, n_layers=1, n_heads=2))
    torch.manual_seed(0)
    folder = save_pretrained(model, tok, tmp / "tiny")
    return package_model(PackageConfig(model=str(folder), out=str(tmp / "model.tar.gz"), progress=False)).path


def test_deploy_invoke_delete_through_aws_endpoint_url(env, archive):
    client(env, "iam").create_role(RoleName="sm", AssumeRolePolicyDocument="{}")
    client(env, "s3").create_bucket(Bucket="models")
    done = llmscratch(env, "deploy", "sagemaker", "--model-data", str(archive), "--image-uri", IMAGE, "--role", ROLE,
                      "--bucket", "models", "--endpoint-name", "tiny", "--wait", "--poll-seconds", "0",
                      "--max-instances", "3", "--target-invocations", "50", "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "endpoint: tiny (InService" in done.stdout and "autoscaling: 1..3 instances, target 50" in done.stdout
    keys = [o["Key"] for o in client(env, "s3").list_objects_v2(Bucket="models")["Contents"]]
    assert len(keys) == 1 and keys[0].startswith("llmscratch/tiny/") and keys[0].endswith("/model.tar.gz")
    endpoint = client(env, "sagemaker").describe_endpoint(EndpointName="tiny")
    assert endpoint["EndpointStatus"] == "InService"
    targets = client(env, "application-autoscaling").describe_scalable_targets(ServiceNamespace="sagemaker")
    assert [t["MaxCapacity"] for t in targets["ScalableTargets"]] == [3]

    results = {"account_id": ACCOUNT, "region": REGION, "results": [
        {"Body": json.dumps([{"generated_text": "Paris."}]), "ContentType": "application/json",
         "InvokedProductionVariant": "AllTraffic", "CustomAttributes": ""}]}
    urllib.request.urlopen(urllib.request.Request(
        f"{env['AWS_ENDPOINT_URL']}/moto-api/static/sagemaker/endpoint-results", data=json.dumps(results).encode(),
        headers={"Content-Type": "application/json"}, method="POST")).read()
    done = llmscratch(env, "deploy", "invoke", "--endpoint-name", "tiny", "--prompt", "Capital of France?")
    assert (done.returncode, done.stdout) == (0, "Paris.\n"), done.stderr

    done = llmscratch(env, "deploy", "delete", "--endpoint-name", "tiny")
    assert done.returncode == 0, done.stderr
    assert "deleted autoscaling target" in done.stdout and "deleted endpoint tiny" in done.stdout
    assert client(env, "sagemaker").list_endpoints()["Endpoints"] == []
    assert client(env, "sagemaker").list_models()["Models"] == []


def test_errors_through_the_server_are_one_line(env, archive):
    client(env, "iam").create_role(RoleName="sm", AssumeRolePolicyDocument="{}")
    done = llmscratch(env, "deploy", "sagemaker", "--model-data", str(archive), "--image-uri", IMAGE, "--role",
                      f"arn:aws:iam::{ACCOUNT}:role/ghost", "--no-progress")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "unknown IAM role" in done.stderr
    done = llmscratch(env, "deploy", "sagemaker", "--model-data", str(archive), "--image-uri", IMAGE, "--role", ROLE,
                      "--bucket", "absent", "--no-progress")
    assert done.returncode == 2 and "S3 bucket absent does not exist" in done.stderr
    done = llmscratch(env, "deploy", "delete", "--endpoint-name", "ghost")
    assert done.returncode == 2 and "no endpoint ghost" in done.stderr
    unreachable = {**env, "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_MAX_ATTEMPTS": "1"}
    done = llmscratch(unreachable, "deploy", "delete", "--endpoint-name", "ghost")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "cannot reach AWS" in done.stderr
