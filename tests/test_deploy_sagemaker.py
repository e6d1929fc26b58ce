"""`llmscratch deploy sagemaker / invoke / delete` under moto's `mock_aws` (in process), and with botocore's
Stubber for what moto does not implement (UpdateEndpoint, a failing endpoint, InvokeEndpointWithResponseStream).

Fake credentials and region are set here, for the tests only.
"""

from __future__ import annotations

import json
import os

import boto3
import pytest
import torch
from botocore.stub import ANY, Stubber

from llmscratch.cli import main
from llmscratch.deploy import sagemaker as sm_mod
from llmscratch.deploy.config import DeleteConfig, InvokeConfig, PackageConfig, SageMakerConfig
from llmscratch.deploy.package import package_model
from llmscratch.model import GPTConfig, build_model
from llmscratch.tokenizer import Tokenizer
from llmscratch.utils import UserError
from llmscratch.weights.ours import save_pretrained

moto = pytest.importorskip("moto")
REGION = "eu-west-1"
ACCOUNT = "123456789012"  # moto's account
ROLE = f"arn:aws:iam::{ACCOUNT}:role/llmscratch-sagemaker"
ARN = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}"
IMAGE = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/llmscratch:latest"


@pytest.fixture
def aws_env(monkeypatch, tmp_path):
    """Fake credentials and region, and no AWS config files or endpoint overrides from the machine."""
    for var in [v for v in os.environ if v.startswith("AWS_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setattr(sm_mod, "_stamp", _counter())


def _counter():
    n = iter(range(1000))
    return lambda: f"261201-120000-{next(n):03d}"


@pytest.fixture
def aws(aws_env):
    """moto in process, with the SageMaker role created."""
    with moto.mock_aws():
        boto3.client("iam").create_role(RoleName="llmscratch-sagemaker", AssumeRolePolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                    "Principal": {"Service": "sagemaker.amazonaws.com"}}]}))
        yield


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """A model.tar.gz of a tiny GPT-2 with a byte tokenizer."""
    tmp = tmp_path_factory.mktemp("archive")
    tok = Tokenizer({i: bytes([i]) for i in range(256)}, [], {"<|endoftext|>": 256}, eos_id=256)
    torch.manual_seed(0)
    model = build_model(GPTConfig(vocab_size=257, context_length=64, emb_dim=32, n_layers=2, n_heads=4))
    folder = save_pretrained(model, tok, tmp / "tiny")
    return package_model(PackageConfig(model=str(folder), out=str(tmp / "model.tar.gz"), progress=False)).path


def cfg(archive, **kw) -> SageMakerConfig:
    base = dict(model_data=str(archive), image_uri=IMAGE, role=ROLE, endpoint_name="tiny", progress=False,
                poll_seconds=0.0)
    return SageMakerConfig(**{**base, **kw})


def test_deploy_uploads_and_creates_model_config_and_endpoint(aws, archive):
    r = sm_mod.deploy(cfg(archive, wait=True, startup_timeout=300, download_timeout=600), say=lambda s: None)
    assert (r.endpoint_name, r.status, r.updated) == ("tiny", "InService", False)
    bucket = f"sagemaker-{REGION}-{ACCOUNT}"  # the default bucket, created
    assert r.model_data == f"s3://{bucket}/llmscratch/tiny/261201-120000-000/model.tar.gz"
    body = boto3.client("s3").get_object(Bucket=bucket, Key=r.model_data.split(bucket + "/")[1])["Body"].read()
    assert body == archive.read_bytes()
    sm = boto3.client("sagemaker")
    model = sm.describe_model(ModelName=r.model_name)
    assert model["ExecutionRoleArn"] == ROLE
    assert model["PrimaryContainer"]["Image"] == IMAGE
    assert model["PrimaryContainer"]["ModelDataUrl"] == r.model_data
    variant = sm.describe_endpoint_config(EndpointConfigName=r.config_name)["ProductionVariants"][0]
    assert variant["ModelName"] == r.model_name and variant["InstanceType"] == "ml.m5.xlarge"
    assert variant["InitialInstanceCount"] == 1
    assert variant["ContainerStartupHealthCheckTimeoutInSeconds"] == 300
    assert variant["ModelDataDownloadTimeoutInSeconds"] == 600
    assert sm.describe_endpoint(EndpointName="tiny")["EndpointConfigName"] == r.config_name
    assert r.model_name == "tiny-261201-120000-001" and len(sm_mod.resource_name("x" * 63, "261201-120000-001")) == 63


def test_a_large_archive_goes_up_in_parts(aws, tmp_path):
    gguf = tmp_path / "big.gguf"
    gguf.write_bytes(b"GGUF" + os.urandom(sm_mod.MULTIPART_THRESHOLD + 1024 * 1024))
    big = package_model(PackageConfig(model=str(gguf), out=str(tmp_path / "big.tar.gz"), progress=False,
                                      compress_level=1)).path
    r = sm_mod.deploy(cfg(big, bucket=None), say=lambda s: None)
    bucket, key = sm_mod.parse_s3_uri(r.model_data)
    head = boto3.client("s3").head_object(Bucket=bucket, Key=key)
    assert head["ETag"].strip('"').endswith("-2")  # a multipart upload of two parts
    assert head["ContentLength"] == big.stat().st_size


def test_s3_model_data_is_used_as_is(aws, archive):
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="mine", CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.upload_file(str(archive), "mine", "models/m.tar.gz")
    r = sm_mod.deploy(cfg("s3://mine/models/m.tar.gz", endpoint_name=None), say=lambda s: None)
    assert r.model_data == "s3://mine/models/m.tar.gz" and r.endpoint_name == "llmscratch-m"
    with pytest.raises(UserError, match="does not exist"):
        sm_mod.deploy(cfg("s3://mine/models/absent.tar.gz"), say=lambda s: None)


def test_autoscaling_registers_the_variant_and_tracks_invocations(aws, archive):
    r = sm_mod.deploy(cfg(archive, min_instances=2, max_instances=4, target_invocations=30), say=lambda s: None)
    assert r.autoscaling == {"min": 2, "max": 4, "target_invocations_per_minute": 30,
                             "policy": "tiny-invocations-per-instance"}
    variant = boto3.client("sagemaker").describe_endpoint_config(EndpointConfigName=r.config_name)
    assert variant["ProductionVariants"][0]["InitialInstanceCount"] == 2
    scaling = boto3.client("application-autoscaling")
    target = scaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]
    assert [(t["ResourceId"], t["ScalableDimension"], t["MinCapacity"], t["MaxCapacity"]) for t in target] == [
        ("endpoint/tiny/variant/AllTraffic", "sagemaker:variant:DesiredInstanceCount", 2, 4)]
    policy = scaling.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"][0]
    tracking = policy["TargetTrackingScalingPolicyConfiguration"]
    assert policy["PolicyType"] == "TargetTrackingScaling" and tracking["TargetValue"] == 30
    assert tracking["PredefinedMetricSpecification"]["PredefinedMetricType"] == "SageMakerVariantInvocationsPerInstance"

    removed = sm_mod.delete(DeleteConfig(endpoint_name="tiny"))
    assert removed == ["autoscaling target", "endpoint tiny", f"endpoint config {r.config_name}",
                       f"model {r.model_name}"]
    assert scaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"] == []
    sm = boto3.client("sagemaker")
    assert sm.list_endpoints()["Endpoints"] == [] and sm.list_models()["Models"] == []
    assert sm.list_endpoint_configs()["EndpointConfigs"] == []


def test_a_failed_update_puts_autoscaling_back_and_removes_what_it_made(aws, archive):
    """moto has no UpdateEndpoint, so a second deploy to the endpoint fails after it has uploaded the archive and
    made a model and config, and taken the autoscaling target off: all of that is undone."""
    first = sm_mod.deploy(cfg(archive, max_instances=3), say=lambda s: None)
    s3, sm = boto3.client("s3"), boto3.client("sagemaker")
    bucket = f"sagemaker-{REGION}-{ACCOUNT}"
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    with pytest.raises(NotImplementedError, match="update_endpoint"):  # moto in process; its server answers 500
        sm_mod.deploy(cfg(archive), say=lambda s: None)
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == keys
    assert [m["ModelName"] for m in sm.list_models()["Models"]] == [first.model_name]
    assert [c["EndpointConfigName"] for c in sm.list_endpoint_configs()["EndpointConfigs"]] == [first.config_name]
    scaling = boto3.client("application-autoscaling")
    target = scaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]
    assert [(t["MinCapacity"], t["MaxCapacity"]) for t in target] == [(1, 3)]
    policies = scaling.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"]
    assert [p["PolicyName"] for p in policies] == ["tiny-invocations-per-instance"]


def test_an_instance_type_that_is_not_sagemakers_is_refused_before_anything_is_made(aws, archive, capsys):
    err = one_line_error(deploy_argv(archive, "--instance-type", "m5.xlarge"), capsys)
    assert "--instance-type 'm5.xlarge' is not a SageMaker instance type" in err
    assert boto3.client("sagemaker").list_models()["Models"] == []


def test_cli_deploy_invoke_delete(aws, archive, capsys):
    main(["deploy", "sagemaker", "--model-data", str(archive), "--image-uri", IMAGE, "--role", ROLE,
          "--endpoint-name", "tiny", "--wait", "--poll-seconds", "0", "--no-progress"])
    out = capsys.readouterr().out
    assert "endpoint: tiny (InService" in out and "llmscratch deploy invoke --endpoint-name tiny" in out
    from moto.sagemakerruntime.models import sagemakerruntime_backends

    backend = sagemakerruntime_backends[ACCOUNT][REGION]
    backend.results_queue.append((json.dumps([{"generated_text": "Hello there"}]), "application/json", "AllTraffic",
                                  ""))
    main(["deploy", "invoke", "--endpoint-name", "tiny", "--prompt", "Hello", "--max-new-tokens", "5"])
    assert capsys.readouterr().out == "Hello there\n"
    main(["deploy", "delete", "--endpoint-name", "tiny"])
    assert "deleted endpoint tiny" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["deploy", "delete", "--endpoint-name", "tiny"])
    assert e.value.code == 2 and f"no endpoint tiny in {REGION}" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- error paths


def one_line_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("llmscratch: error: ")
    return err


def deploy_argv(archive, *extra):
    return ["deploy", "sagemaker", "--model-data", str(archive), "--image-uri", IMAGE, "--role", ROLE,
            "--endpoint-name", "tiny", "--no-progress", *extra]


def test_no_credentials(aws_env, archive, monkeypatch, capsys):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance role lookup
    assert "no AWS credentials found" in one_line_error(deploy_argv(archive), capsys)


def test_no_region(aws_env, archive, monkeypatch, capsys):
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    assert "no AWS region" in one_line_error(deploy_argv(archive), capsys)


def test_unknown_role(aws, archive, capsys):
    argv = deploy_argv(archive)
    argv[argv.index(ROLE)] = f"arn:aws:iam::{ACCOUNT}:role/nobody"
    assert "unknown IAM role" in one_line_error(argv, capsys)
    argv[argv.index(f"arn:aws:iam::{ACCOUNT}:role/nobody")] = "my-role"
    assert "is not an IAM role ARN" in one_line_error(argv, capsys)


def test_missing_bucket(aws, archive, capsys):
    err = one_line_error(deploy_argv(archive, "--bucket", "no-such-bucket"), capsys)
    assert "S3 bucket no-such-bucket does not exist" in err
    assert "leave out --bucket NAME to use sagemaker-" in err  # the library's bucket=NAME, as the CLI's flag


def test_archive_without_a_model(aws, tmp_path, capsys):
    import tarfile

    with tarfile.open(tmp_path / "model.tar.gz", "w:gz") as tar:
        tar.add(__file__, arcname="inference.py")
    assert "holds no model" in one_line_error(deploy_argv(tmp_path / "model.tar.gz"), capsys)
    assert boto3.client("sagemaker").list_models()["Models"] == []  # nothing was created


def test_bad_settings(aws, archive, capsys):
    err = one_line_error(deploy_argv(archive, "--min-instances", "2"), capsys)
    assert "autoscaling needs --max-instances; --min-instances and --target-invocations are optional" in err
    assert "not valid" in one_line_error(deploy_argv(archive, "--endpoint-name", "bad_name"), capsys)


# ------------------------------------------------------------------------------- Stubber: what moto lacks


class StubbedSession:
    """A session whose SageMaker client is stubbed (the calls moto does not implement) and whose other clients
    come from moto."""

    def __init__(self, sagemaker):
        self.region_name = REGION
        self._sm = sagemaker
        self._real = boto3.Session(region_name=REGION)

    def client(self, name):
        return self._sm if name == "sagemaker" else self._real.client(name)

    def get_credentials(self):
        return self._real.get_credentials()


def _endpoint(status, config, reason=None):
    d = {"EndpointName": "tiny", "EndpointArn": f"{ARN}:endpoint/tiny",
         "EndpointConfigName": config, "EndpointStatus": status, "CreationTime": "2026-12-01",
         "LastModifiedTime": "2026-12-01"}
    return {**d, "FailureReason": reason} if reason else d


def test_update_moves_an_existing_endpoint_to_a_new_config_and_removes_the_old(aws, archive, monkeypatch):
    sm = boto3.client("sagemaker", region_name=REGION)
    stub = Stubber(sm)
    stub.add_response("describe_endpoint", _endpoint("InService", "tiny-old"), {"EndpointName": "tiny"})
    stub.add_response("create_model", {"ModelArn": f"{ARN}:model/m"}, {
        "ModelName": "tiny-261201-120000-001", "ExecutionRoleArn": ROLE, "PrimaryContainer": ANY, "Tags": ANY})
    stub.add_response("create_endpoint_config", {"EndpointConfigArn": f"{ARN}:endpoint-config/c"}, {
        "EndpointConfigName": "tiny-261201-120000-001", "ProductionVariants": ANY, "Tags": ANY})
    stub.add_response("update_endpoint", {"EndpointArn": f"{ARN}:endpoint/tiny"}, {
        "EndpointName": "tiny", "EndpointConfigName": "tiny-261201-120000-001"})
    stub.add_response("describe_endpoint", _endpoint("Updating", "tiny-old"), {"EndpointName": "tiny"})
    stub.add_response("describe_endpoint", _endpoint("InService", "tiny-261201-120000-001"), {"EndpointName": "tiny"})
    stub.add_response("describe_endpoint_config", {
        "EndpointConfigName": "tiny-old", "EndpointConfigArn": f"{ARN}:endpoint-config/old",
        "CreationTime": "2026-12-01",
        "ProductionVariants": [{"VariantName": "AllTraffic", "ModelName": "tiny-old-model"}]},
        {"EndpointConfigName": "tiny-old"})
    stub.add_response("delete_endpoint_config", {}, {"EndpointConfigName": "tiny-old"})
    stub.add_response("delete_model", {}, {"ModelName": "tiny-old-model"})
    monkeypatch.setattr(sm_mod, "session", lambda region=None: StubbedSession(sm))
    with stub:
        r = sm_mod.deploy(cfg(archive, wait=True), say=lambda s: None)
    stub.assert_no_pending_responses()
    assert r.updated and r.status == "InService"
    assert r.removed == ["endpoint config tiny-old", "model tiny-old-model"]


def test_a_failed_endpoint_shows_sagemakers_failure_reason(aws, archive, monkeypatch, capsys):
    reason = "The primary container for production variant AllTraffic did not pass the ping health check."
    sm = boto3.client("sagemaker", region_name=REGION)
    stub = Stubber(sm)
    stub.add_client_error("describe_endpoint", "ValidationException", "Could not find endpoint tiny.")
    stub.add_response("create_model", {"ModelArn": f"{ARN}:model/m"})
    stub.add_response("create_endpoint_config", {"EndpointConfigArn": f"{ARN}:endpoint-config/c"})
    stub.add_response("create_endpoint", {"EndpointArn": f"{ARN}:endpoint/tiny"})
    stub.add_response("describe_endpoint", _endpoint("Creating", "c"))
    stub.add_response("describe_endpoint", _endpoint("Failed", "c", reason))
    monkeypatch.setattr(sm_mod, "session", lambda region=None: StubbedSession(sm))
    with stub:
        err = one_line_error(deploy_argv(archive, "--wait", "--poll-seconds", "0"), capsys)
    assert f"endpoint tiny failed: {reason}" in err and "/aws/sagemaker/Endpoints/tiny" in err

    stub = Stubber(sm)  # deploying again onto the failed endpoint says what to do
    stub.add_response("describe_endpoint", _endpoint("Failed", "c", reason))
    with stub:
        err = one_line_error(deploy_argv(archive), capsys)
    assert "has failed" in err and "llmscratch deploy delete --endpoint-name tiny" in err


class FakeRuntime:
    """sagemaker-runtime whose response stream is the given PayloadPart chunks (moto has no response streaming,
    and Stubber cannot build an event stream)."""

    def __init__(self, chunks):
        self.chunks, self.calls = chunks, []

    def invoke_endpoint_with_response_stream(self, **kw):
        self.calls.append(kw)
        return {"Body": iter([{"PayloadPart": {"Bytes": c}} for c in self.chunks])}


def sse(*datas: str) -> bytes:
    return "".join(f"data: {d}\n\n" for d in datas).encode()


def test_stream_prints_tokens_as_they_come(aws_env, monkeypatch, capsys):
    stream = sse(json.dumps({"token": {"text": "Hel"}}), json.dumps({"token": {"text": "lo é"}}),
                 json.dumps({"generated_text": "Hello é"}), "[DONE]")
    chunks = [stream[i:i + 7] for i in range(0, len(stream), 7)]  # cut inside events and inside the é
    runtime = FakeRuntime(chunks)

    class S:
        region_name = REGION

        def client(self, name):
            return runtime

    monkeypatch.setattr(sm_mod, "session", lambda region=None: S())
    main(["deploy", "invoke", "--endpoint-name", "tiny", "--prompt", "Hi", "--stream", "--temperature", "0"])
    assert capsys.readouterr().out == "Hello é\n"
    body = json.loads(runtime.calls[0]["Body"])
    assert body == {"inputs": "Hi", "parameters": {"temperature": 0.0}, "stream": True}
    assert runtime.calls[0]["EndpointName"] == "tiny"


@pytest.mark.parametrize("cut", [1, 2, 3, 5, 64])
def test_sse_parser_reassembles_events_cut_anywhere(cut):
    raw = b": comment\n\ndata: one\n\nevent: x\ndata: two\ndata: lines\n\r\n" + b"data: three\r\n\r\ndata: tail"
    chunks = [raw[i:i + cut] for i in range(0, len(raw), cut)]
    assert list(sm_mod.sse_data(chunks)) == ["one", "two\nlines", "three", "tail"]


def test_stream_errors_are_one_line():
    with pytest.raises(UserError, match="reported an error: out of memory"):
        list(sm_mod.stream_texts([json.dumps({"error": "out of memory"})]))
    with pytest.raises(UserError, match="ModelStreamError"):
        list(sm_mod.payload_parts([{"ModelStreamError": {"Message": "boom"}}], "tiny"))


def test_invoke_request_body():
    body = sm_mod.request_body(InvokeConfig(endpoint_name="e", prompt="Hi", max_new_tokens=3), stream=False)
    assert json.loads(body) == {"inputs": "Hi", "parameters": {"max_new_tokens": 3}}
    assert sm_mod.generated_text(b'[{"generated_text": "x"}]') == "x"
    assert sm_mod.generated_text(b"plain") == "plain"
    chat = InvokeConfig(endpoint_name="e", prompt="Hi", max_new_tokens=3, temperature=0, chat=True)
    assert json.loads(sm_mod.request_body(chat, stream=True)) == {
        "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "temperature": 0, "stream": True}
    answer = {"object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant",
                                                                                "content": "Paris."}}]}
    assert sm_mod.generated_text(json.dumps(answer).encode()) == "Paris."
    chunks = [json.dumps({"choices": [{"index": 0, "delta": d}]}) for d in ({"role": "assistant", "content": ""},
                                                                           {"content": "Par"}, {"content": "is."})]
    assert list(sm_mod.stream_texts([*chunks, "[DONE]"])) == ["Par", "is."]
    with pytest.raises(UserError, match="prompt is empty"):
        InvokeConfig(endpoint_name="e", prompt="  ")
    with pytest.raises(UserError, match="endpoint name 'bad_name' is not valid"):
        InvokeConfig(endpoint_name="bad_name", prompt="Hi")


def test_an_error_from_the_container_is_one_line(aws_env, monkeypatch, capsys):
    runtime = boto3.client("sagemaker-runtime", region_name=REGION)
    stub = Stubber(runtime)
    stub.add_client_error("invoke_endpoint", "ModelError", "Received client error (400) from primary with message "
                          '"{"error": {"message": "parameters.max_new_tokens must be in 1..64"}}"', 424)

    class S:
        region_name = REGION

        def client(self, name):
            return runtime

    monkeypatch.setattr(sm_mod, "session", lambda region=None: S())
    with stub:
        err = one_line_error(["deploy", "invoke", "--endpoint-name", "tiny", "--prompt", "Hi", "--max-new-tokens",
                              "999"], capsys)
    assert "invoking tiny: ModelError: Received client error (400)" in err and "max_new_tokens" in err
