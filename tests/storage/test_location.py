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
