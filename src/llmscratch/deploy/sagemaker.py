"""A SageMaker real-time endpoint from a model.tar.gz: upload, create or update, wait, autoscale, invoke, delete.

One endpoint = one model (image + model data + role), one endpoint config (one production variant "AllTraffic")
and the endpoint. Each deploy makes a new model and config named ENDPOINT-STAMP; deploying to an existing
endpoint updates it to the new config (SageMaker swaps instances without downtime), and after a successful wait
the previous model and config are removed.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from llmscratch.deploy.aws import account_id, aws_errors, check_role, error_code, session
from llmscratch.deploy.config import DeleteConfig, InvokeConfig, SageMakerConfig
from llmscratch.utils import UserError

VARIANT = "AllTraffic"
SCALABLE_DIMENSION = "sagemaker:variant:DesiredInstanceCount"
DEFAULT_TARGET_INVOCATIONS = 20.0
MULTIPART_THRESHOLD = 8 * 1024 * 1024  # S3 parts are at least 5 MiB (but the last)
MULTIPART_CHUNKSIZE = 8 * 1024 * 1024
ENDPOINT_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
TAG = "llmscratch:endpoint"


@dataclass
class DeployResult:
    """What `deploy` did."""

    endpoint_name: str
    model_name: str
    config_name: str
    model_data: str  # s3:// URI
    updated: bool  # an existing endpoint was moved to the new config
    status: str  # the endpoint's status when deploy returned
    autoscaling: dict | None = None
    removed: list[str] = field(default_factory=list)  # previous models and configs removed after an update
    previous_config: str | None = None  # the config an update replaced


# ------------------------------------------------------------------------------------------------ names


def default_endpoint_name(model_data: str) -> str:
    """llmscratch-<archive name without .tar.gz>, reduced to the characters SageMaker allows."""
    stem = Path(model_data.rstrip("/")).name
    for suffix in (".tar.gz", ".tgz", ".tar"):
        stem = stem.removesuffix(suffix)
    stem = re.sub(r"[^a-zA-Z0-9]+", "-", stem).strip("-") or "model"
    return f"llmscratch-{stem}"[:45].rstrip("-")


def check_endpoint_name(name: str) -> str:
    if not ENDPOINT_NAME.match(name):
        raise UserError(f"endpoint name {name!r} is not valid: letters, digits and single hyphens, at most 63 "
                        "characters, starting with a letter or digit")
    return name


def resource_name(endpoint: str, stamp: str) -> str:
    """A model or endpoint config name: the endpoint's name (shortened) and a time stamp, at most 63 characters."""
    return f"{endpoint[:63 - len(stamp) - 1].rstrip('-')}-{stamp}"


def _stamp() -> str:
    t = time.time()
    return time.strftime("%y%m%d-%H%M%S", time.gmtime(t)) + f"-{int(t * 1000) % 1000:03d}"


# ------------------------------------------------------------------------------------------------ S3


def parse_s3_uri(uri: str) -> tuple[str, str]:
    m = re.match(r"^s3://([^/]+)/(.+)$", uri)
    if not m:
        raise UserError(f"{uri!r} is not an S3 URI (s3://BUCKET/KEY)")
    return m.group(1), m.group(2)


def ensure_bucket(sess, bucket: str | None) -> str:
    """The bucket to upload to: `bucket` (which must exist), or sagemaker-REGION-ACCOUNT (created if missing)."""
    import botocore.exceptions as bx

    s3 = sess.client("s3")
    name = bucket or f"sagemaker-{sess.region_name}-{account_id(sess)}"
    try:
        s3.head_bucket(Bucket=name)
        return name
    except bx.ClientError as e:
        if error_code(e) not in ("404", "NoSuchBucket", "NotFound"):
            raise UserError(f"S3 bucket {name}: cannot use it ({error_code(e)}): check its name and your "
                            "s3:ListBucket permission") from None
    if bucket:
        raise UserError(f"S3 bucket {bucket} does not exist: create it (`aws s3 mb s3://{bucket} --region "
                        f"{sess.region_name}`) or leave out bucket=NAME to use sagemaker-{sess.region_name}-ACCOUNT",
                        params="bucket")
    with aws_errors(f"creating the S3 bucket {name}"):
        where = {} if sess.region_name == "us-east-1" else {
            "CreateBucketConfiguration": {"LocationConstraint": sess.region_name}}
        s3.create_bucket(Bucket=name, **where)
    return name


def upload(sess, path: Path, bucket: str, key: str, progress: bool = True) -> str:
    """Upload `path` to s3://bucket/key (multipart above 8 MiB, with a progress bar); returns the URI."""
    from boto3.s3.transfer import TransferConfig
    from tqdm import tqdm

    config = TransferConfig(multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_CHUNKSIZE)
    with aws_errors(f"uploading {path} to s3://{bucket}/{key}"), tqdm(
        total=path.stat().st_size, unit="B", unit_scale=True, desc=f"uploading {path.name}", disable=not progress,
    ) as bar:
        sess.client("s3").upload_file(str(path), bucket, key, Config=config, Callback=bar.update)
    return f"s3://{bucket}/{key}"


def model_data_uri(sess, cfg: SageMakerConfig, endpoint: str) -> str:
    """The s3:// URI of the model data: checked and uploaded when local, checked to exist when on S3."""
    import botocore.exceptions as bx

    from llmscratch.deploy.package import check_archive

    if cfg.model_data.startswith("s3://"):
        bucket, key = parse_s3_uri(cfg.model_data)
        try:
            sess.client("s3").head_object(Bucket=bucket, Key=key)
        except bx.ClientError as e:
            if error_code(e) in ("404", "NoSuchKey", "NotFound", "NoSuchBucket"):
                raise UserError(f"{cfg.model_data} does not exist (missing bucket or key)") from None
            raise UserError(f"{cfg.model_data}: cannot read it ({error_code(e)})") from None
        return cfg.model_data
    path = Path(cfg.model_data).expanduser()
    check_archive(path)
    bucket = ensure_bucket(sess, cfg.bucket)
    key = f"{cfg.prefix.strip('/')}/{endpoint}/{_stamp()}/model.tar.gz".lstrip("/")
    return upload(sess, path, bucket, key, progress=cfg.progress)


# ------------------------------------------------------------------------------------------------ deploy


def deploy(cfg: SageMakerConfig, say: Callable[[str], None] = print) -> DeployResult:
    """Create (or update) the endpoint `cfg` describes; wait and autoscale when asked."""
    with aws_errors("deploying"):  # what the steps below do not name themselves (e.g. the network)
        return _deploy(cfg, say)


def _deploy(cfg: SageMakerConfig, say: Callable[[str], None]) -> DeployResult:
    endpoint = check_endpoint_name(cfg.endpoint_name or default_endpoint_name(cfg.model_data))
    sess = session(cfg.region)
    check_role(sess, cfg.role)
    sm = sess.client("sagemaker")
    existing = describe_endpoint(sm, endpoint)
    if existing and existing["EndpointStatus"] not in ("InService", "Failed"):
        raise UserError(f"endpoint {endpoint} is {existing['EndpointStatus']}: wait until it is InService, then "
                        "deploy again")
    if existing and existing["EndpointStatus"] == "Failed":
        raise UserError(f"endpoint {endpoint} has failed ({existing.get('FailureReason', 'no reason given')}): "
                        f"remove it with `llmscratch deploy delete --endpoint-name {endpoint}`, then deploy again")
    uri = model_data_uri(sess, cfg, endpoint)
    uploaded = uri if uri != cfg.model_data else None
    stamp = _stamp()
    model_name = config_name = resource_name(endpoint, stamp)
    scaling = sess.client("application-autoscaling")
    made: list[str] = []  # what this deploy created, removed again if a later step fails
    old_scaling = None
    try:
        create_model(sm, cfg, model_name, uri, endpoint)
        made.append("model")
        create_endpoint_config(sm, cfg, config_name, model_name, endpoint)
        made.append("config")
        with aws_errors(f"{'updating' if existing else 'creating'} the endpoint {endpoint}"):
            if existing:
                old_scaling = autoscaling_settings(scaling, endpoint)
                deregister_autoscaling(scaling, endpoint)  # an update that changes the instance type needs this
                sm.update_endpoint(EndpointName=endpoint, EndpointConfigName=config_name)
            else:
                sm.create_endpoint(EndpointName=endpoint, EndpointConfigName=config_name,
                                   Tags=[{"Key": TAG, "Value": endpoint}])
    except BaseException:
        _undo(sess, sm, scaling, endpoint, made, model_name, config_name, uploaded, old_scaling)
        raise
    result = DeployResult(endpoint, model_name, config_name, uri, updated=existing is not None, status="",
                          previous_config=existing["EndpointConfigName"] if existing else None)
    say(f"{'updating' if existing else 'creating'} endpoint {endpoint} (model {model_name}, {cfg.instance_type})")
    if old_scaling and not cfg.autoscaling:
        say(f"the endpoint's autoscaling ({old_scaling['MinCapacity']}-{old_scaling['MaxCapacity']} instances) was "
            "removed for the update; deploy with --max-instances to have it again")
    if not (cfg.wait or cfg.autoscaling):
        result.status = describe_endpoint(sm, endpoint)["EndpointStatus"]
        return result
    final = wait_for_endpoint(sm, endpoint, config_name, cfg.wait_timeout, cfg.poll_seconds, cfg.progress)
    result.status = final["EndpointStatus"]
    if cfg.autoscaling:
        result.autoscaling = configure_autoscaling(scaling, endpoint, cfg)
    if existing:
        result.removed = remove_config_and_models(sm, existing["EndpointConfigName"])
    return result


def create_model(sm, cfg: SageMakerConfig, name: str, model_data: str, endpoint: str) -> None:
    with aws_errors(f"creating the SageMaker model {name}"):
        sm.create_model(
            ModelName=name,
            ExecutionRoleArn=cfg.role,
            PrimaryContainer={"Image": cfg.image_uri, "ModelDataUrl": model_data,
                              "Environment": {"LLMSCRATCH_MODEL_DIR": "/opt/ml/model"}},
            Tags=[{"Key": TAG, "Value": endpoint}],
        )


def create_endpoint_config(sm, cfg: SageMakerConfig, name: str, model_name: str, endpoint: str) -> None:
    initial = max(cfg.instances, cfg.min_instances or 1)
    if cfg.max_instances is not None:
        initial = min(initial, cfg.max_instances)
    with aws_errors(f"creating the endpoint config {name}"):
        sm.create_endpoint_config(
            EndpointConfigName=name,
            ProductionVariants=[{
                "VariantName": VARIANT,
                "ModelName": model_name,
                "InstanceType": cfg.instance_type,
                "InitialInstanceCount": initial,
                "InitialVariantWeight": 1.0,
                "ContainerStartupHealthCheckTimeoutInSeconds": cfg.startup_timeout,
                "ModelDataDownloadTimeoutInSeconds": cfg.download_timeout,
            }],
            Tags=[{"Key": TAG, "Value": endpoint}],
        )


def describe_endpoint(sm, name: str) -> dict | None:
    """DescribeEndpoint's answer, or None when there is no such endpoint."""
    import botocore.exceptions as bx

    try:
        return sm.describe_endpoint(EndpointName=name)
    except bx.ClientError as e:
        if error_code(e) == "ValidationException" and "Could not find endpoint" in str(e):
            return None
        with aws_errors(f"describing the endpoint {name}"):
            raise


def wait_for_endpoint(sm, name: str, config_name: str, timeout: float, poll: float, progress: bool) -> dict:
    """Poll until the endpoint is InService on `config_name`; UserError with SageMaker's FailureReason if not."""
    from tqdm import tqdm

    start = time.monotonic()
    with tqdm(total=None, bar_format="{desc} [{elapsed}]", disable=not progress, leave=False) as bar:
        while True:
            d = describe_endpoint(sm, name)
            if d is None:
                raise UserError(f"endpoint {name} disappeared while waiting (deleted by someone?)")
            status = d["EndpointStatus"]
            bar.set_description_str(f"endpoint {name}: {status}")
            if status == "Failed":
                raise UserError(f"endpoint {name} failed: {d.get('FailureReason', 'SageMaker gave no reason')} "
                                f"(container logs: CloudWatch log group /aws/sagemaker/Endpoints/{name})")
            if status == "InService" and d.get("EndpointConfigName") == config_name:
                return d
            if status == "InService" and d.get("FailureReason"):  # a failed update rolls back to the old config
                raise UserError(f"updating endpoint {name} failed: {d['FailureReason']}; it still serves "
                                f"{d.get('EndpointConfigName')}")
            if time.monotonic() - start > timeout:
                raise UserError(f"endpoint {name} is still {status} after {timeout:.0f} s; check it with "
                                f"`aws sagemaker describe-endpoint --endpoint-name {name}`")
            time.sleep(poll)


# ------------------------------------------------------------------------------------------------ autoscaling


def resource_id(endpoint: str) -> str:
    return f"endpoint/{endpoint}/variant/{VARIANT}"


def configure_autoscaling(scaling, endpoint: str, cfg: SageMakerConfig) -> dict:
    """Register the variant with Application Auto Scaling and track SageMakerVariantInvocationsPerInstance."""
    low, high = cfg.min_instances or 1, cfg.max_instances
    target = cfg.target_invocations or DEFAULT_TARGET_INVOCATIONS
    policy = f"{endpoint}-invocations-per-instance"
    with aws_errors(f"setting up autoscaling for {endpoint}"):
        scaling.register_scalable_target(ServiceNamespace="sagemaker", ResourceId=resource_id(endpoint),
                                         ScalableDimension=SCALABLE_DIMENSION, MinCapacity=low, MaxCapacity=high)
        scaling.put_scaling_policy(
            PolicyName=policy, ServiceNamespace="sagemaker", ResourceId=resource_id(endpoint),
            ScalableDimension=SCALABLE_DIMENSION, PolicyType="TargetTrackingScaling",
            TargetTrackingScalingPolicyConfiguration={
                "TargetValue": float(target),
                "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
                "ScaleInCooldown": 300,
                "ScaleOutCooldown": 60,
            },
        )
    return {"min": low, "max": high, "target_invocations_per_minute": target, "policy": policy}


def autoscaling_settings(scaling, endpoint: str) -> dict | None:
    """The variant's scalable target (MinCapacity, MaxCapacity) with its scaling policies, or None."""
    with aws_errors(f"reading the autoscaling target of {endpoint}"):
        found = scaling.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[resource_id(endpoint)],
                                                  ScalableDimension=SCALABLE_DIMENSION)["ScalableTargets"]
        if not found:
            return None
        policies = scaling.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=resource_id(endpoint),
                                                     ScalableDimension=SCALABLE_DIMENSION)["ScalingPolicies"]
    return {"MinCapacity": found[0]["MinCapacity"], "MaxCapacity": found[0]["MaxCapacity"], "policies": policies}


def restore_autoscaling(scaling, endpoint: str, settings: dict) -> None:
    """Register the scalable target and put back the policies that `autoscaling_settings` read."""
    scaling.register_scalable_target(ServiceNamespace="sagemaker", ResourceId=resource_id(endpoint),
                                     ScalableDimension=SCALABLE_DIMENSION, MinCapacity=settings["MinCapacity"],
                                     MaxCapacity=settings["MaxCapacity"])
    for p in settings["policies"]:
        kw = {k: p[k] for k in ("PolicyType", "TargetTrackingScalingPolicyConfiguration",
                                "StepScalingPolicyConfiguration") if k in p}
        scaling.put_scaling_policy(PolicyName=p["PolicyName"], ServiceNamespace="sagemaker",
                                   ResourceId=resource_id(endpoint), ScalableDimension=SCALABLE_DIMENSION, **kw)


def _undo(sess, sm, scaling, endpoint: str, made: list[str], model_name: str, config_name: str,
          uploaded: str | None, old_scaling: dict | None) -> None:
    """After a failed deploy: put back the endpoint's autoscaling, remove the config, model and upload this deploy
    made. Best effort: a step that fails here is logged, and the deploy's own error is what the user sees."""
    import logging

    log = logging.getLogger(__name__)
    steps = []
    if old_scaling:
        steps.append((f"restoring the autoscaling of {endpoint}", lambda: restore_autoscaling(scaling, endpoint,
                                                                                            old_scaling)))
    if "config" in made:
        steps.append((f"removing the endpoint config {config_name}",
                      lambda: sm.delete_endpoint_config(EndpointConfigName=config_name)))
    if "model" in made:
        steps.append((f"removing the model {model_name}", lambda: sm.delete_model(ModelName=model_name)))
    if uploaded:
        bucket, key = parse_s3_uri(uploaded)
        steps.append((f"removing {uploaded}", lambda: sess.client("s3").delete_object(Bucket=bucket, Key=key)))
    for what, step in steps:
        try:
            step()
        except Exception as e:  # noqa: BLE001 - cleanup must not hide the deploy's error
            log.warning("after the failed deploy, %s failed: %s", what, e)


def deregister_autoscaling(scaling, endpoint: str) -> bool:
    """Remove the variant's scalable target (and with it its policies) if there is one; True if there was."""
    with aws_errors(f"reading the autoscaling target of {endpoint}"):
        found = scaling.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[resource_id(endpoint)],
                                                  ScalableDimension=SCALABLE_DIMENSION)["ScalableTargets"]
    if not found:
        return False
    with aws_errors(f"removing the autoscaling target of {endpoint}"):
        scaling.deregister_scalable_target(ServiceNamespace="sagemaker", ResourceId=resource_id(endpoint),
                                           ScalableDimension=SCALABLE_DIMENSION)
    return True


# ------------------------------------------------------------------------------------------------ delete


def remove_config_and_models(sm, config_name: str) -> list[str]:
    """Delete an endpoint config and the models of its variants; returns what was removed."""
    import botocore.exceptions as bx

    removed = []
    try:
        variants = sm.describe_endpoint_config(EndpointConfigName=config_name)["ProductionVariants"]
    except bx.ClientError:
        variants = []  # already gone
    with aws_errors(f"deleting the endpoint config {config_name}"):
        if variants:
            sm.delete_endpoint_config(EndpointConfigName=config_name)
            removed.append(f"endpoint config {config_name}")
    for v in variants:
        try:
            sm.delete_model(ModelName=v["ModelName"])
            removed.append(f"model {v['ModelName']}")
        except bx.ClientError as e:
            if "Could not find model" not in str(e):
                with aws_errors(f"deleting the model {v['ModelName']}"):
                    raise
    return removed


def delete(cfg: DeleteConfig) -> list[str]:
    """Remove the endpoint, its autoscaling target, its endpoint config and its model(s); returns what went."""
    with aws_errors(f"deleting the endpoint {cfg.endpoint_name}"):
        return _delete(cfg)


def _delete(cfg: DeleteConfig) -> list[str]:
    check_endpoint_name(cfg.endpoint_name)
    sess = session(cfg.region)
    sm = sess.client("sagemaker")
    d = describe_endpoint(sm, cfg.endpoint_name)
    if d is None:
        raise UserError(f"no endpoint {cfg.endpoint_name} in {sess.region_name}")
    removed = []
    if deregister_autoscaling(sess.client("application-autoscaling"), cfg.endpoint_name):
        removed.append("autoscaling target")
    with aws_errors(f"deleting the endpoint {cfg.endpoint_name}"):
        sm.delete_endpoint(EndpointName=cfg.endpoint_name)
    removed.append(f"endpoint {cfg.endpoint_name}")
    return removed + remove_config_and_models(sm, d["EndpointConfigName"])


# ------------------------------------------------------------------------------------------------ invoke


def request_body(cfg: InvokeConfig, stream: bool) -> bytes:
    """The JSON the container's /invocations takes: {"inputs", "parameters"} (and "stream"), or with `cfg.chat`
    an OpenAI chat completion body {"messages", "max_tokens", "temperature"}."""
    length = "max_tokens" if cfg.chat else "max_new_tokens"
    params = {k: v for k, v in ((length, cfg.max_new_tokens), ("temperature", cfg.temperature)) if v is not None}
    body = ({"messages": [{"role": "user", "content": cfg.prompt}], **params} if cfg.chat
            else {"inputs": cfg.prompt, "parameters": params})
    if stream:
        body["stream"] = True
    return json.dumps(body).encode()


def invoke(cfg: InvokeConfig) -> str:
    """One request through sagemaker-runtime InvokeEndpoint; returns the generated text."""
    runtime = session(cfg.region).client("sagemaker-runtime")
    with aws_errors(f"invoking {cfg.endpoint_name}"):
        answer = runtime.invoke_endpoint(EndpointName=cfg.endpoint_name, ContentType="application/json",
                                         Accept="application/json", Body=request_body(cfg, stream=False))
        raw = answer["Body"].read()
    return generated_text(raw)


def generated_text(raw: bytes) -> str:
    """The text of the container's answer [{"generated_text": ...}] (raw text if it is not that JSON)."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return raw.decode("utf-8", errors="replace")
    if isinstance(data, list) and data and isinstance(data[0], dict) and "generated_text" in data[0]:
        return data[0]["generated_text"]
    if isinstance(data, dict) and "generated_text" in data:
        return data["generated_text"]
    if isinstance(data, dict) and isinstance(data.get("choices"), list) and data["choices"]:  # OpenAI's answers
        c = data["choices"][0]
        text = c.get("message", {}).get("content") if isinstance(c.get("message"), dict) else c.get("text")
        if isinstance(text, str):
            return text
    return json.dumps(data)


def invoke_stream(cfg: InvokeConfig) -> Iterator[str]:
    """Tokens (text pieces) as the endpoint sends them, through InvokeEndpointWithResponseStream."""
    runtime = session(cfg.region).client("sagemaker-runtime")
    with aws_errors(f"invoking {cfg.endpoint_name} with a response stream"):
        answer = runtime.invoke_endpoint_with_response_stream(
            EndpointName=cfg.endpoint_name, ContentType="application/json", Accept="text/event-stream",
            Body=request_body(cfg, stream=True))
        yield from stream_texts(sse_data(payload_parts(answer["Body"], cfg.endpoint_name)))


def payload_parts(events: Iterable[dict], endpoint: str) -> Iterator[bytes]:
    """The bytes of each PayloadPart event; UserError on a stream error event."""
    for event in events:
        if "PayloadPart" in event:
            yield event["PayloadPart"]["Bytes"]
        for kind in ("ModelStreamError", "InternalStreamFailure"):
            if kind in event:
                raise UserError(f"{endpoint}: the stream broke ({kind}): {event[kind].get('Message', '')}")


def sse_data(chunks: Iterable[bytes]) -> Iterator[str]:
    """The data of each server-sent event in a byte stream cut anywhere (lines end in \n or \r\n; an event
    ends at a blank line; comments and other fields are skipped)."""
    buffer, data = b"", []
    for chunk in [*chunks, b"\n\n"]:  # the final blank line ends an event the stream left open
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for raw in lines:
            line = raw.removesuffix(b"\r").decode("utf-8")
            if not line:
                if data:
                    yield "\n".join(data)
                data = []
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))


def stream_texts(datas: Iterable[str]) -> Iterator[str]:
    """Text pieces from SSE data: {"token": {"text"}}, {"text"} or OpenAI chunks ({"choices": [{"delta"}]}) per
    event, until [DONE] or a final {"generated_text"}; an {"error"} event is a UserError."""
    for data in datas:
        if data.strip() == "[DONE]":
            return
        try:
            obj = json.loads(data)
        except ValueError:
            yield data
            continue
        if not isinstance(obj, dict):
            continue
        if "error" in obj:
            raise UserError(f"the endpoint reported an error: {obj['error']}")
        token, choices = obj.get("token"), obj.get("choices")
        if isinstance(choices, list):  # an OpenAI chunk: chat delta or completion text
            c = choices[0] if choices and isinstance(choices[0], dict) else {}
            delta = c.get("delta")
            text = delta.get("content") if isinstance(delta, dict) else c.get("text")
            if text:
                yield text
            continue
        text = token.get("text") if isinstance(token, dict) else obj.get("text")
        if text:
            yield text
        if obj.get("generated_text") is not None and text is None:
            return


def how_to_invoke(endpoint: str, region: str | None) -> list[str]:
    """Lines telling a user how to call the endpoint."""
    region_flag = f" --region {region}" if region else ""
    return [
        f"invoke: llmscratch deploy invoke --endpoint-name {endpoint}{region_flag} --prompt \"Hello\" [--stream]",
        f"  or:   aws sagemaker-runtime invoke-endpoint --endpoint-name {endpoint}{region_flag} --content-type "
        "application/json --cli-binary-format raw-in-base64-out --body '{\"inputs\": \"Hello\"}' /dev/stdout",
        f"delete: llmscratch deploy delete --endpoint-name {endpoint}{region_flag}",
    ]


__all__ = ["DeployResult", "deploy", "delete", "invoke", "invoke_stream", "sse_data", "stream_texts",
           "how_to_invoke", "default_endpoint_name"]
