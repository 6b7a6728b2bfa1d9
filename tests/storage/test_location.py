"""Location.parse: one spelling per scheme, whatever case the user typed."""

from __future__ import annotations

import pytest

from cloudmic.errors import StoreError
from cloudmic.storage.location import Location


@pytest.mark.parametrize("typed", ["HTTPS://example.org/root", "Https://example.org/root/"])
def test_scheme_case_does_not_matter(typed):
    loc = Location.parse(typed)
    assert loc.url == "https://example.org/root" and loc.is_http and not loc.is_local


def test_an_s3_url_needs_a_bucket():
    with pytest.raises(StoreError, match="needs a bucket"):
        Location.parse("S3:///key")


@pytest.mark.parametrize("url, what", [("s3://t1/x", "an S3 bucket name"),
                                       ("s3://-bucket", "an S3 bucket name"),
                                       ("gs://b", "a Google Cloud Storage bucket name"),
                                       ("gs://My-Bucket", "a Google Cloud Storage bucket name"),
                                       ("az://c", "an Azure container name"),
                                       ("az://my--container", "an Azure container name"),
                                       ("az://Container", "an Azure container name"),
                                       # the account comes from the environment, not the URL
                                       ("az://cnt@acc.blob.core.windows.net/p",
                                        "an Azure container name"),
                                       ("s3://bucket@other/p", "an S3 bucket name"),
                                       ("gs://" + "a" * 64, "a Google Cloud Storage bucket name")])
def test_a_name_the_store_would_refuse_is_told_at_once(url, what):
    """Told as a name the store refuses (with its rule), not later as a write refused for
    want of credentials (SeaweedFS answers 's3://t1' with 'The specified bucket is not
    valid')."""
    with pytest.raises(StoreError, match=f"is not {what} \\(3-63 .*; name one like"):
        Location.parse(url)


@pytest.mark.parametrize("url", ["s3://cloudmic", "s3://my.bucket-2/p",
                                 "s3://Old_Bucket_Before_2018/p",  # AWS us-east-1's old rule
                                 "gs://my_bucket.example.org/p", "az://my-container/p",
                                 "az://$web/index.html", "https://example.org/x"])
def test_names_each_store_accepts_parse(url):
    assert Location.parse(url).url == url
