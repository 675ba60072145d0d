"""SigV4 pre-signing with botocore, and the bucket the sandbox stores uploads in."""

from __future__ import annotations

import asyncio
from typing import Any

import botocore.config
import botocore.session
from botocore.exceptions import ClientError

from styldod_batch.sandbox.seaweed import S3Credentials


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
        self._public = _client(credentials, public_endpoint)
        self._direct = _client(credentials, direct_endpoint)

    def upload_url(self, key: str, content_type: str, ttl_s: int) -> str:
        url: str = self._public.generate_presigned_url(
            "put_object",
            Params={"Bucket": self.bucket, "Key": key, "ContentType": content_type},
            ExpiresIn=ttl_s,
        )
        return url

    def object_url(self, key: str) -> str:
        """The unsigned URL that names an object (the order's ``image_url``)."""
        url: str = self._public.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=1
        )
        return url.split("?", 1)[0]

    def direct_url(self, method: str, key: str, ttl_s: int = 300) -> str:
        """A URL signed for the storage server itself, for the sandbox's own reads."""
        operation = {"HEAD": "head_object", "GET": "get_object", "DELETE": "delete_object"}[method]
        url: str = self._direct.generate_presigned_url(
            operation, Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=ttl_s
        )
        return url

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
