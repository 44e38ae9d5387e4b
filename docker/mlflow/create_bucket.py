"""Create the MLflow artifacts bucket and the lake's bucket on the S3-compatible store when missing (idempotent).

Run once by the ``create-bucket`` service of docker/compose.yaml. It speaks plain S3 (boto3), so the same
step works against MinIO, any other S3-compatible store or AWS S3 itself. Reads ``MLFLOW_S3_ENDPOINT_URL``
(unset for AWS), ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``MLFLOW_ARTIFACTS_BUCKET`` and
``LOOPLINE_LAKE_BUCKET`` (optional).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

MISSING = {"404", "NoSuchBucket", "NotFound"}


def ensure_bucket(client: Any, bucket: str, endpoint: str | None) -> int:
    """Create ``bucket`` unless it exists; 0 when it is there, 1 (with the reason printed) otherwise."""
    last_error: Exception | None = None
    for _ in range(30):
        try:
            client.head_bucket(Bucket=bucket)
            print(f"create-bucket: bucket {bucket!r} already exists")
            return 0
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in MISSING:
                print(f"create-bucket: cannot use bucket {bucket!r}: {exc}", file=sys.stderr)
                return 1
            client.create_bucket(Bucket=bucket)
            print(f"create-bucket: created bucket {bucket!r}")
            return 0
        except BotoCoreError as exc:  # the store is not answering yet
            last_error = exc
            time.sleep(2)
    print(f"create-bucket: the object store at {endpoint} did not answer: {last_error}", file=sys.stderr)
    return 1


def main() -> int:
    buckets = [os.environ["MLFLOW_ARTIFACTS_BUCKET"], os.environ.get("LOOPLINE_LAKE_BUCKET", "").strip()]
    endpoint = os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None
    client = boto3.client("s3", endpoint_url=endpoint)
    return max(ensure_bucket(client, bucket, endpoint) for bucket in dict.fromkeys(b for b in buckets if b))


if __name__ == "__main__":
    sys.exit(main())
