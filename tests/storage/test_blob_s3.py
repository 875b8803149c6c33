"""S3 backend specifics: its location string, and clear errors for a wrong bucket or
wrong credentials (against the S3 server .ci/run starts; skipped without one).
The store's behaviour on S3 is tests/storage/test_blobs.py, run on every backend."""
from __future__ import annotations

import os

import pytest

from storage.blob_s3 import BlobStoreUnavailable, S3Backend, S3Location, s3_location
from tests.conftest import S3_ENDPOINT


def test_location_round_trips_and_is_validated():
    loc = S3Location.parse("s3://emoji3d-blobs/prod/v1?endpoint_url=http://store:9000&region=eu-west-1")
    assert loc == S3Location("emoji3d-blobs", "prod/v1/", "http://store:9000", "eu-west-1")
    assert S3Location.parse(loc.format()) == loc
    assert S3Location.parse("s3://emoji3d-blobs") == S3Location("emoji3d-blobs", "", None, None)
    assert s3_location("emoji3d-blobs", "/a/", "", "") == "s3://emoji3d-blobs/a"
    with pytest.raises(ValueError, match="bucket name"):
        S3Location.parse("s3://No_Such/x")
    with pytest.raises(ValueError, match="unknown S3 location option"):
        S3Location.parse("s3://emoji3d-blobs/x?secret=1")
    with pytest.raises(ValueError, match="s3://bucket/prefix"):
        S3Location.parse("s3:///x")


needs_s3 = pytest.mark.skipif(not S3_ENDPOINT, reason="no S3 test server (EMOJI3D_TEST_S3_ENDPOINT)")


@needs_s3
def test_a_missing_bucket_is_one_clear_error():
    with pytest.raises(BlobStoreUnavailable, match="'no-such-bucket-here' does not exist"):
        S3Backend(S3Location("no-such-bucket-here", "", S3_ENDPOINT, "us-east-1"))


@needs_s3
def test_wrong_credentials_are_one_clear_error(s3_bucket):
    import boto3

    wrong = boto3.client("s3", endpoint_url=S3_ENDPOINT, region_name="us-east-1",
                         aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"], aws_secret_access_key="wrong")
    with pytest.raises(BlobStoreUnavailable, match="refused access"):
        S3Backend(S3Location(s3_bucket, "", S3_ENDPOINT, "us-east-1"), client=wrong)


def test_an_unreachable_endpoint_is_one_clear_error():
    with pytest.raises(BlobStoreUnavailable, match="cannot reach the object store"):
        S3Backend(S3Location("emoji3d-blobs", "", "http://127.0.0.1:9", "us-east-1"))


def test_config_keys_make_the_location_every_process_gets(tmp_path, repo_root):
    from emoji3d.config import load_config
    from emoji3d.errors import ConfigError

    shipped = load_config(repo_root / "config.toml", env={})
    assert shipped.blobs.backend == "local" and shipped.blob_location == str(shipped.blob_dir)
    path = tmp_path / "config.toml"
    path.write_text('[blobs]\nbackend = "s3"\ns3_bucket = "emoji3d-blobs"\ns3_prefix = "/prod/"\n'
                    's3_endpoint_url = "http://objectstore:8333"\n')
    cfg = load_config(path, env={})
    assert S3Location.parse(cfg.blob_location) == S3Location("emoji3d-blobs", "prod/", "http://objectstore:8333",
                                                             None)
    path.write_text('[blobs]\nbackend = "s3"\n')
    with pytest.raises(ConfigError, match="s3_bucket is empty"):
        load_config(path, env={})
