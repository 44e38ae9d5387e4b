"""Create the MLflow artifacts bucket on the S3-compatible store when it is missing (idempotent).

Run once by the ``create-bucket`` service of docker/compose.yaml. It speaks plain S3 (boto3), so the same
step works against MinIO, any other S3-compatible store or AWS S3 itself. Reads ``MLFLOW_S3_ENDPOINT_URL``
(unset for AWS), ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` and ``MLFLOW_ARTIFACTS_BUCKET``.
"""

from __future__ import annotations

import os
import sys
import time

import boto3
from botocore.exceptions import BotoCoreError, ClientError

MISSING = {"404", "NoSuchBucket", "NotFound"}


def main() -> int:
    bucket = os.environ["MLFLOW_ARTIFACTS_BUCKET"]
    endpoint = os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None
    client = boto3.client("s3", endpoint_url=endpoint)
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


if __name__ == "__main__":
    sys.exit(main())
