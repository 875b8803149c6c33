"""S3-compatible blob backend (boto3): the shared object store for several hosts.

Conventions
-----------
* Location: ``s3://BUCKET/PREFIX?endpoint_url=URL&region=NAME``. PREFIX may be
  empty; ``endpoint_url`` is omitted for AWS itself (boto3 also honours
  ``AWS_ENDPOINT_URL``). Credentials never appear in the location: boto3's
  standard chain supplies them (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
  a profile, an instance role).
* Object key of a blob: ``PREFIX/<d[0:2]>/<d[2:4]>/<digest>``, as in the
  local folder. Keys under PREFIX that do not have this shape are never
  touched.
* Atomic writes: one PUT up to ``multipart_threshold`` bytes, a multipart
  upload above it; S3 shows neither until it is complete. A multipart upload
  left behind by a crashed process is an unfinished write: GC aborts it once
  it is older than the grace period.
* A file is hashed while it is uploaded; if its bytes no longer match the
  digest (changed on disk meanwhile), the object is deleted again and OSError
  raised, like the local backend's check.
* The bucket must exist; it is checked when the backend is opened, so a
  wrong name or endpoint is one clear error at start.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator
from urllib.parse import parse_qs, urlsplit

from storage.blob_backend import BlobNotFound, StaleObject, check_digest

_KEY_TAIL = re.compile(r"^([0-9a-f]{2})/([0-9a-f]{2})/([0-9a-f]{64})$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_PART = 8 << 20  # multipart threshold and part size (S3 needs parts of >= 5 MiB)
_UPLOAD_MARK = "upload:"  # StaleObject.name prefix of an unfinished multipart upload


class BlobStoreUnavailable(OSError):
    """The object store cannot be reached or refuses us (operator problem)."""


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str  # "" or ending in "/"
    endpoint_url: str | None
    region: str | None

    @classmethod
    def parse(cls, location: str) -> "S3Location":
        parts = urlsplit(location)
        if parts.scheme != "s3" or not parts.netloc:
            raise ValueError(f"S3 blob location must look like s3://bucket/prefix, got {location!r}")
        if not _BUCKET.match(parts.netloc):
            raise ValueError(f"not a valid S3 bucket name: {parts.netloc!r}")
        query = parse_qs(parts.query)
        unknown = set(query) - {"endpoint_url", "region"}
        if unknown:
            raise ValueError(f"unknown S3 location option(s) {sorted(unknown)}; known: endpoint_url, region")
        prefix = parts.path.strip("/")
        return cls(parts.netloc, f"{prefix}/" if prefix else "",
                   query.get("endpoint_url", [None])[0], query.get("region", [None])[0])

    def format(self) -> str:
        opts = "&".join(f"{k}={v}" for k, v in (("endpoint_url", self.endpoint_url), ("region", self.region)) if v)
        return f"s3://{self.bucket}/{self.prefix.rstrip('/')}" + (f"?{opts}" if opts else "")


def s3_location(bucket: str, prefix: str = "", endpoint_url: str = "", region: str = "") -> str:
    """The location string for these settings (what config.toml's [blobs] keys make)."""
    loc = S3Location(bucket, f"{prefix.strip('/')}/" if prefix.strip("/") else "", endpoint_url or None,
                     region or None)
    S3Location.parse(loc.format())  # validates the bucket name
    return loc.format()


class _HashingReader:
    """A read-only file wrapper that hashes what is read through it."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.sha = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        chunk = self.raw.read(n)
        self.sha.update(chunk)
        return chunk


class S3Backend:
    """Blob objects in one bucket under one prefix."""

    def __init__(self, location: S3Location, client: Any | None = None) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config as BotoConfig

        self.loc = location
        self.client = client or boto3.client(
            "s3", endpoint_url=location.endpoint_url, region_name=location.region,
            config=BotoConfig(connect_timeout=5, read_timeout=60,
                              retries={"max_attempts": 4, "mode": "standard"}))
        # One thread: the file is read (and hashed) in order.
        self.transfer = TransferConfig(multipart_threshold=_PART, multipart_chunksize=_PART, use_threads=False)
        self._check_bucket()

    @classmethod
    def from_location(cls, location: str) -> "S3Backend":
        return cls(S3Location.parse(location))

    def describe(self) -> str:
        where = f" at {self.loc.endpoint_url}" if self.loc.endpoint_url else ""
        return f"s3://{self.loc.bucket}/{self.loc.prefix}{where}"

    def _check_bucket(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_bucket(Bucket=self.loc.bucket)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise BlobStoreUnavailable(f"S3 bucket {self.loc.bucket!r} does not exist at "
                                           f"{self.loc.endpoint_url or 'AWS'}; create it first") from None
            raise BlobStoreUnavailable(f"S3 bucket {self.loc.bucket!r} refused access ({code}); "
                                       "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY") from None
        except BotoCoreError as exc:
            raise BlobStoreUnavailable(f"cannot reach the object store {self.describe()}: {exc}") from None

    def key(self, digest: str) -> str:
        d = check_digest(digest)
        return f"{self.loc.prefix}{d[0:2]}/{d[2:4]}/{d}"

    @staticmethod
    def _missing(exc: Exception) -> bool:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
        return code in ("404", "NoSuchKey", "NotFound")

    def size(self, digest: str) -> int | None:
        from botocore.exceptions import ClientError

        try:
            return int(self.client.head_object(Bucket=self.loc.bucket, Key=self.key(digest))["ContentLength"])
        except ClientError as exc:
            if self._missing(exc):
                return None
            raise

    def open(self, digest: str) -> BinaryIO:
        from botocore.exceptions import ClientError

        try:
            return self.client.get_object(Bucket=self.loc.bucket, Key=self.key(digest))["Body"]
        except ClientError as exc:
            if self._missing(exc):
                raise BlobNotFound(f"blob {digest} has no object in {self.describe()}") from None
            raise

    def write(self, digest: str, source: bytes | Path) -> None:
        import io

        key = self.key(digest)
        if isinstance(source, bytes):
            self.client.upload_fileobj(io.BytesIO(source), self.loc.bucket, key, Config=self.transfer)
            return
        with open(source, "rb") as raw:
            reader = _HashingReader(raw)
            self.client.upload_fileobj(reader, self.loc.bucket, key, Config=self.transfer)
        if reader.sha.hexdigest() != digest:
            self.delete(digest)
            raise OSError(f"{source} changed while being stored")

    def delete(self, digest: str) -> None:
        self.client.delete_object(Bucket=self.loc.bucket, Key=self.key(digest))

    def stale(self, cutoff: float) -> Iterator[StaleObject]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.loc.bucket, Prefix=self.loc.prefix)
        for page in pages:
            for obj in page.get("Contents", []):
                tail = _KEY_TAIL.match(obj["Key"][len(self.loc.prefix):])
                if tail is None or tail.group(3)[:4] != tail.group(1) + tail.group(2):
                    continue
                if obj["LastModified"].timestamp() < cutoff:
                    yield StaleObject(obj["Key"], int(obj["Size"]), tail.group(3))
        uploads = self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.loc.bucket,
                                                                               Prefix=self.loc.prefix)
        for page in uploads:
            for up in page.get("Uploads", []):
                if _KEY_TAIL.match(up["Key"][len(self.loc.prefix):]) and up["Initiated"].timestamp() < cutoff:
                    yield StaleObject(f"{_UPLOAD_MARK}{up['UploadId']}:{up['Key']}", 0, None)

    def discard(self, item: StaleObject) -> bool:
        from botocore.exceptions import ClientError

        if item.name.startswith(_UPLOAD_MARK):
            upload_id, _, key = item.name[len(_UPLOAD_MARK):].partition(":")
            try:
                self.client.abort_multipart_upload(Bucket=self.loc.bucket, Key=key, UploadId=upload_id)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "NoSuchUpload":
                    raise
                return False
            return True
        # DELETE answers the same whether or not the object was there: ask first. The store
        # calls this holding the digest's row, so no other pass removes it in between.
        try:
            self.client.head_object(Bucket=self.loc.bucket, Key=item.name)
        except ClientError as exc:
            if self._missing(exc):
                return False
            raise
        self.client.delete_object(Bucket=self.loc.bucket, Key=item.name)
        return True
