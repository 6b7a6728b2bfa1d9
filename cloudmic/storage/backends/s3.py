"""S3 and S3-compatible stores (SeaweedFS, MinIO, ...)."""

from __future__ import annotations

import json
import os
import re
from typing import TYPE_CHECKING, Any

from cloudmic.storage.backends.base import (
    Backend,
    Capabilities,
    bucket_prefix,
)

if TYPE_CHECKING:
    import fsspec


# the part size of an S3 multipart upload, passed to the client explicitly: the ETag depends
# on it. The parts in flight are held in memory (with s3fs's default 50 MiB, one upload held
# ~200 MiB of a worker, issue 16); 8 MiB (the AWS CLI's default) allows objects up to 80 GiB
# (10,000 parts; shards are a few hundred MB)
S3_PART_BYTES = 8 << 20


def s3_single_put(size: int, part_bytes: int = S3_PART_BYTES) -> bool:
    """Whether a file of ``size`` bytes goes up in one PUT: below two parts, as s3fs decides
    (``S3FileSystem._put_file``) and :meth:`S3Backend.upload` does too."""
    return size < min(5 << 30, 2 * part_bytes)



def _embedded_s3_options() -> dict[str, Any]:
    from cloudmic.storage import seaweed

    info = seaweed.status()
    return info.storage_options() if info else {}


class S3Backend(Backend):
    """S3 and S3-compatible stores (SeaweedFS, MinIO, ...): AWS conventions
    (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ``AWS_REGION``);
    with none set and the embedded store running, its keys."""

    schemes = ("s3",)
    caps = Capabilities(writable=True, folders=False, conditional_put=True, checksum="s3-etag")
    protocol = "s3"
    credentials_hint = "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL)"
    example = "s3://my-bucket/prefix"
    # AWS's rule for buckets made before 2018 in us-east-1 (names made since are a subset:
    # 3-63 lower-case letters, digits, dots and hyphens), so an old bucket still opens
    bucket_name = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,253}[A-Za-z0-9]")
    bucket_rule = ("an S3 bucket name (3-63 lower-case letters, digits, dots and hyphens, "
                   "starting and ending with a letter or digit)")
    one_get = {"max_concurrency": 1}  # else s3fs sends a HEAD, and ranged GETs above 50 MB
    part_bytes = S3_PART_BYTES
    pipe_command = "aws s3 cp {u} -"

    def resolve_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """s3fs options: the caller's, else the AWS environment, else the embedded store."""
        opts = dict(options)
        if "key" in opts or "anon" in opts or "profile" in opts:
            return opts
        env_key = os.environ.get("AWS_ACCESS_KEY_ID")
        if env_key:
            opts.update(key=env_key, secret=os.environ.get("AWS_SECRET_ACCESS_KEY"))
            endpoint = (os.environ.get("AWS_ENDPOINT_URL")
                        or os.environ.get("AWS_ENDPOINT_URL_S3"))
            if endpoint:
                opts.setdefault("client_kwargs", {})["endpoint_url"] = endpoint
            return opts
        return {**_embedded_s3_options(), **opts}

    @staticmethod
    def endpoint(options: dict[str, Any]) -> str | None:
        return ((options.get("client_kwargs") or {}).get("endpoint_url")
                or os.environ.get("AWS_ENDPOINT_URL"))

    def object_store(self, url: str, options: dict[str, Any]) -> Any:
        from obstore.store import S3Store

        bucket, prefix = bucket_prefix(self.fs_path(url))
        endpoint = self.endpoint(options)
        region = ((options.get("client_kwargs") or {}).get("region_name")
                  or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
                  or "us-east-1")
        config: dict[str, Any] = {"region": region}
        if options.get("key"):
            config.update(access_key_id=options["key"], secret_access_key=options["secret"])
        if options.get("anon"):
            config["skip_signature"] = True
        if endpoint:  # an S3-compatible server: path-style unless told otherwise
            virtual = (options.get("config_kwargs") or {}).get("s3", {}).get(
                "addressing_style") == "virtual"
            config.update(endpoint=endpoint, virtual_hosted_style_request=virtual)
        client = {"allow_http": bool(endpoint and endpoint.startswith("http://"))}
        return S3Store(bucket, prefix=prefix, client_options=client, **config)

    def upload(self, fs: fsspec.AbstractFileSystem, local: str, path: str,
               options: dict[str, Any]) -> None:
        """obstore's PUT: 1.2-2.5x the MB/s of s3fs's to the embedded store for the same
        client CPU (120 MB, alternating). The ETag depends on the parts, so they are as
        :func:`s3_single_put` and ``HashingWriter`` say: one PUT below two parts, else parts
        of ``S3_PART_BYTES``; two parts in flight (~16 MiB held) keep it streaming."""
        import obstore

        bucket, key = bucket_prefix(path)
        with open(local, "rb") as f:
            obstore.put(self.object_store(f"s3://{bucket}", options), key or "", f,
                        use_multipart=not s3_single_put(os.fstat(f.fileno()).st_size),
                        chunk_size=S3_PART_BYTES, max_concurrency=2)

    def stored_md5(self, info: dict[str, Any]) -> str | None:
        tag = str(info.get("ETag") or info.get("etag") or "").strip('"')
        return tag or None

    def snippet_lines(self, options: dict[str, Any]) -> list[str]:
        endpoint = (options.get("client_kwargs") or {}).get("endpoint_url")
        kwargs = (f", \"client_kwargs\": {{\"endpoint_url\": {json.dumps(endpoint)}}}"
                  if endpoint else "")
        if options.get("anon"):
            return [f"storage_options = {{\"anon\": True{kwargs}}}"]
        return ["# keys from the environment (or your AWS profile); a public bucket: "
                "{\"anon\": True}",
                "storage_options = {\"key\": os.environ.get(\"AWS_ACCESS_KEY_ID\"),",
                "                   \"secret\": os.environ.get(\"AWS_SECRET_ACCESS_KEY\")"
                + kwargs.replace(", ", ",\n                   ", 1) + "}"]
