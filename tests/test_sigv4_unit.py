"""The sandbox's own SigV4 pre-signing gives exactly botocore's URLs (no server needed)."""

from __future__ import annotations

import datetime as dt
import functools
from typing import Any
from unittest import mock

import botocore.config
import botocore.session
import pytest

from styldod_batch.sandbox.sigv4 import object_path, presign

MOMENT = dt.datetime(2026, 12, 1, 18, 2, 32, tzinfo=dt.UTC)


@functools.cache
def botocore_client() -> Any:
    """One client for the module: botocore reads its service models (JSON, about a second of
    CPU) for each new session."""
    return botocore.session.get_session().create_client(
        "s3",
        endpoint_url="http://127.0.0.1:8333",
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        region_name="us-east-1",
        config=botocore.config.Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )


@pytest.mark.parametrize("key", ["uploads/a/0/photo.jpg", "uploads/x y/1/a+b é~.jpg"])
@pytest.mark.parametrize(
    ("method", "operation", "content_type"),
    [("PUT", "put_object", "image/jpeg"), ("HEAD", "head_object", None)],
)
def test_the_same_url_as_botocore(
    key: str, method: str, operation: str, content_type: str | None
) -> None:
    params = {"Bucket": "bucket", "Key": key}
    if content_type is not None:
        params["ContentType"] = content_type
    # botocore reads the time through this function: it is given the test's moment.
    with mock.patch("botocore.auth.get_current_datetime", return_value=MOMENT.replace(tzinfo=None)):
        expected = botocore_client().generate_presigned_url(operation, Params=params, ExpiresIn=900)

    ours = presign(
        method,
        "http://127.0.0.1:8333",
        "bucket",
        key,
        access_key="AKIDEXAMPLE",
        secret_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        region="us-east-1",
        ttl_s=900,
        content_type=content_type,
        now=MOMENT,
    )

    assert ours == expected
    assert expected.split("?")[0].endswith(object_path("bucket", key))
