"""Talking S3 to the embedded store: a botocore client with its keys, the write probe that
says the store is ready, the "does it answer" check of ``status``-like callers, and the
bucket setup for anonymous browser viewers. Plain botocore (no s3fs) so that a probe is
one request with no retries and no cache.
"""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Any

from cloudmic.storage import seaweed_security as security
from cloudmic.storage.seaweed_state import REGION, ServerInfo

logger = logging.getLogger(__name__)

PROBE_BUCKET = "cloudmic-probe"
"""Bucket the readiness probe writes one small object to (left in place)."""
PROBE_KEY = "_cloudmic_probe"

# What browser viewers (vizarr, neuroglancer, zarrita.js) need from a bucket: cross-origin
# GET/HEAD with a Range header, and the response headers they read back.
CORS_RULES = {"CORSRules": [{
    "AllowedOrigins": ["*"], "AllowedMethods": ["GET", "HEAD"], "AllowedHeaders": ["*"],
    "ExposeHeaders": ["Content-Range", "Content-Length", "Content-Type", "ETag",
                      "Accept-Ranges", "Last-Modified"],
    "MaxAgeSeconds": 3600}]}


def s3_client(info: ServerInfo, timeout: float) -> Any:
    """A botocore S3 client with the admin keys, one attempt per call."""
    import botocore.session
    from botocore.config import Config

    session = botocore.session.Session()
    return session.create_client(
        "s3",
        endpoint_url=info.endpoint,
        region_name=REGION,
        aws_access_key_id=info.access_key,
        aws_secret_access_key=info.secret_key,
        config=Config(
            connect_timeout=min(timeout, 2.0),
            read_timeout=timeout,
            retries={"total_max_attempts": 1},
            s3={"addressing_style": "path"},
        ),
    )


def probe_write(client: Any) -> None:
    """Create the probe bucket if needed and write one object: raises until writes work.

    ``/healthz`` of ``weed mini`` answers before writes succeed: only a real write tells.
    """
    from botocore.exceptions import ClientError

    try:
        client.create_bucket(Bucket=PROBE_BUCKET)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code")
        if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise
    client.put_object(Bucket=PROBE_BUCKET, Key=PROBE_KEY, Body=b"ok")


def is_answering(info: ServerInfo, timeout: float = 2.0) -> bool:
    """Whether the server answers an authenticated S3 request (list buckets)."""
    try:
        s3_client(info, timeout).list_buckets()
    except Exception as exc:  # any failure means "not answering"
        logger.debug("store at %s does not answer: %s", info.endpoint, exc)
        return False
    return True


def share_bucket(info: ServerInfo, bucket: str) -> None:
    """Create ``bucket`` if missing, give it the CORS rules browser viewers need and the
    bucket policy that keeps anonymous readers out of its private ``.cloudmic/`` prefix."""
    client = s3_client(info, timeout=10.0)
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou,
                             client.exceptions.BucketAlreadyExists):
        client.create_bucket(Bucket=bucket)
    client.put_bucket_cors(Bucket=bucket, CORSConfiguration=CORS_RULES)
    client.put_bucket_policy(Bucket=bucket,
                             Policy=json.dumps(security.public_bucket_policy(bucket)))


__all__ = [
    "CORS_RULES",
    "PROBE_BUCKET",
    "PROBE_KEY",
    "is_answering",
    "probe_write",
    "s3_client",
    "share_bucket",
]
