"""Pre-signed URLs for the sandbox's bucket (``sigv4``), and creating that bucket (botocore)."""

from __future__ import annotations

import asyncio
from typing import Any

import botocore.config
import botocore.session
from botocore.exceptions import ClientError

from styldod_batch.sandbox.seaweed import S3Credentials
from styldod_batch.sandbox.sigv4 import object_path, presign


class Presigner:
    """Pre-signs URLs for one bucket; ``public_endpoint`` is the host clients send to."""

    def __init__(
        self,
        credentials: S3Credentials,
        *,
        public_endpoint: str,
        direct_endpoint: str,
        bucket: str,
    ) -> None:
        self.bucket = bucket
        self.public_endpoint = public_endpoint.rstrip("/")
        self.direct_endpoint = direct_endpoint.rstrip("/")
        self._credentials = credentials
        self._direct = _client(credentials, direct_endpoint)

    def _sign(
        self, method: str, endpoint: str, key: str, ttl_s: int, content_type: str | None = None
    ) -> str:
        c = self._credentials
        return presign(
            method,
            endpoint,
            self.bucket,
            key,
            access_key=c.access_key,
            secret_key=c.secret_key,
            region=c.region,
            ttl_s=ttl_s,
            content_type=content_type,
        )

    def upload_url(self, key: str, content_type: str, ttl_s: int) -> str:
        return self._sign("PUT", self.public_endpoint, key, ttl_s, content_type)

    def object_url(self, key: str) -> str:
        """The unsigned URL that names an object (the order's ``image_url``)."""
        return self.public_endpoint + object_path(self.bucket, key)

    def direct_url(self, method: str, key: str, ttl_s: int = 300) -> str:
        """A URL signed for the storage server itself, for the sandbox's own reads."""
        if method not in ("HEAD", "GET", "DELETE"):
            raise ValueError(f"no direct URL for {method}")
        return self._sign(method, self.direct_endpoint, key, ttl_s)

    async def create_bucket(self) -> None:
        """Create the bucket; one that exists already (ours) is fine."""
        try:
            await asyncio.to_thread(self._direct.create_bucket, Bucket=self.bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in (
                "BucketAlreadyOwnedByYou",
                "BucketAlreadyExists",
            ):
                raise


def _client(credentials: S3Credentials, endpoint: str) -> Any:
    session = botocore.session.get_session()
    return session.create_client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=credentials.access_key,
        aws_secret_access_key=credentials.secret_key,
        region_name=credentials.region,
        config=botocore.config.Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"max_attempts": 1},
        ),
    )
