"""From a model folder to a live SageMaker endpoint and back.

- package.py: model.tar.gz (model at the top level, serving.json, manifest.json of sha256 sums), and the check
  the container runs before it starts serving;
- entrypoint.sh: the container's ENTRYPOINT (SageMaker's `docker run IMAGE serve` -> `llmscratch serve`);
- image.py: docker build, ECR login and push;
- sagemaker.py: S3 upload, model / endpoint config / endpoint, waiting, autoscaling, invoke, delete (boto3);
- aws.py: sessions and boto3 errors as one-line messages;
- config.py: the typed settings of each step (the CLI's flags).
"""

from importlib import resources
from pathlib import Path


def entrypoint_script() -> Path:
    """The path of the container entrypoint script shipped in this package."""
    return Path(str(resources.files(__name__) / "entrypoint.sh"))
