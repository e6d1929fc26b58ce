"""AWS sessions and errors: one place that turns boto3's exceptions into one-line UserErrors.

boto3 honours AWS_ENDPOINT_URL (and AWS_ENDPOINT_URL_<SERVICE>), so every call here also reaches a local
stand-in such as moto's server.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator

from llmscratch.utils import UserError

ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/(?:[\w+=,.@-]+/)*([\w+=,.@-]{1,64})$")
CREDENTIALS_HELP = ("run `aws configure`, set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or run "
                    "where an instance or task role provides them")


def session(region: str | None = None):
    """A boto3 session with a region and credentials, or a UserError saying which is missing."""
    import boto3
    import botocore.exceptions

    try:
        s = boto3.Session(region_name=region or os.environ.get("AWS_REGION") or None)
    except botocore.exceptions.ProfileNotFound as e:
        raise UserError(f"AWS profile not found: {e}") from None
    if not s.region_name:
        raise UserError("no AWS region: pass region=REGION, set AWS_REGION (or AWS_DEFAULT_REGION), or put a "
                        "region in ~/.aws/config", params="region")
    if s.get_credentials() is None:
        raise UserError(f"no AWS credentials found: {CREDENTIALS_HELP}")
    return s


@contextlib.contextmanager
def aws_errors(action: str) -> Iterator[None]:
    """Turn boto3 errors raised while doing `action` into one-line UserErrors."""
    import botocore.exceptions as bx

    try:
        yield
    except bx.NoCredentialsError:
        raise UserError(f"{action}: no AWS credentials found: {CREDENTIALS_HELP}") from None
    except bx.NoRegionError:
        raise UserError(f"{action}: no AWS region: pass region=REGION or set AWS_REGION", params="region") from None
    except bx.EndpointConnectionError as e:
        raise UserError(f"{action}: cannot reach AWS ({e}); check the network, the region and AWS_ENDPOINT_URL") \
            from None
    except bx.ClientError as e:
        raise UserError(f"{action}: {describe_client_error(e)}") from None
    except bx.BotoCoreError as e:
        raise UserError(f"{action}: {e}") from None


def describe_client_error(e) -> str:
    """A one-line reading of a botocore ClientError: the code and AWS's message, with a hint for common codes."""
    err = e.response.get("Error", {})
    code, message = err.get("Code", "Error"), err.get("Message", str(e))
    hints = {
        "InvalidClientTokenId": "the access key is not valid",
        "UnrecognizedClientException": "the access key is not valid",
        "SignatureDoesNotMatch": "the secret key does not match the access key",
        "ExpiredToken": "the session credentials have expired: refresh them",
        "ExpiredTokenException": "the session credentials have expired: refresh them",
        "AccessDenied": "your credentials lack a permission (docs/deploy.md lists the IAM permissions)",
        "AccessDeniedException": "your credentials lack a permission (docs/deploy.md lists the IAM permissions)",
        "ResourceLimitExceeded": "an account quota is reached: ask for more in Service Quotas or use another "
                                 "instance type",
    }
    hint = f" ({hints[code]})" if code in hints else ""
    return f"{code}: {message}{hint}"


def error_code(e) -> str:
    """The error code of a botocore ClientError."""
    return e.response.get("Error", {}).get("Code", "")


def check_role(sess, role_arn: str) -> None:
    """UserError when `role_arn` is not a role ARN or names a role that does not exist (when we may look)."""
    import botocore.exceptions as bx

    m = ROLE_ARN.match(role_arn or "")
    if not m:
        raise UserError(f"{role_arn!r} is not an IAM role ARN (arn:aws:iam::ACCOUNT:role/NAME)")
    try:
        sess.client("iam").get_role(RoleName=m.group(1))
    except bx.ClientError as e:
        if error_code(e) == "NoSuchEntity":
            raise UserError(f"unknown IAM role {role_arn}: create it (docs/deploy.md shows its trust and permission "
                            "policies) or pass an existing role's ARN") from None
        if error_code(e) not in ("AccessDenied", "AccessDeniedException"):
            raise UserError(f"checking the role {role_arn}: {describe_client_error(e)}") from None
        # without iam:GetRole we cannot look; SageMaker itself reports a role it cannot assume


def account_id(sess) -> str:
    """The account of the session's credentials."""
    with aws_errors("reading the account id (sts get-caller-identity)"):
        return sess.client("sts").get_caller_identity()["Account"]
