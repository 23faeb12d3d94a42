"""A small S3 client: HEAD and ranged GET of one object, signed with AWS Signature Version 4.

The operator (to index an object-storage payload) and the worker SDK (to read one shard's bytes)
need two calls of the S3 API, so they get these, on the standard library alone, instead of an SDK
that would put tens of megabytes into every worker image. Path-style URLs
(``ENDPOINT/BUCKET/KEY``) work with every S3-compatible server (MinIO, Ceph, versitygw) and with AWS.

Credentials never leave this module's requests: errors name the bucket, key and HTTP status, never
a key, a signature or what the server said beyond its S3 error code. Redirects are not followed (they
would carry the signed request elsewhere). The operator's store refuses endpoints that resolve to
loopback or link-local addresses (``refuse_local``): a tenant names the endpoint, and the operator's
network position (its own port, a cloud's metadata service) is not theirs to probe.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import hmac
import http.client
import ipaddress
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
import urllib.response
from collections.abc import Iterator, Mapping

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
TIMEOUT_SECONDS = 30.0
ATTEMPTS = 3  # of a request that got no answer or a 5xx; 0.5 s, then 1 s between them
_ERROR_CODE = re.compile(r"^[A-Za-z]{1,40}$")


class ObjectStoreError(RuntimeError):
    """A request the server refused or could not answer; ``status`` is the HTTP status (0: no answer)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ObjectChanged(ObjectStoreError):
    """The object is no longer the version that was indexed (its ETag changed): HTTP 412."""


class EndpointRefused(ObjectStoreError):
    """The endpoint resolves to an address the operator does not send requests to."""


class MalformedRequest(ObjectStoreError):
    """A request (say, a credential with a line break) or an answer http.client refuses: never retried."""


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None  # the 3xx is raised as an HTTPError instead


_OPENER = urllib.request.build_opener(_NoRedirects)


@dataclasses.dataclass(frozen=True)
class Credentials:
    access_key_id: str
    secret_access_key: str
    session_token: str | None = None

    def __repr__(self) -> str:  # never print the secret (a traceback, a debug log)
        return f"Credentials(access_key_id={self.access_key_id[:4]}...)"


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def _quote_path(path: str) -> str:
    """URI-encode each path segment as SigV4 wants (RFC 3986 unreserved characters kept, '/' kept)."""
    return urllib.parse.quote(path, safe="/-_.~")


def sign(
    method: str,
    url: str,
    headers: Mapping[str, str],
    credentials: Credentials,
    region: str,
    now: datetime.datetime,
    payload_sha256: str = EMPTY_SHA256,
    service: str = "s3",
) -> dict[str, str]:
    """``headers`` plus the SigV4 ones (Authorization, x-amz-date, x-amz-content-sha256, host)."""
    parts = urllib.parse.urlsplit(url)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    day = amz_date[:8]
    signed = {k.lower(): " ".join(v.strip().split()) for k, v in headers.items()}
    signed["host"] = parts.netloc
    signed["x-amz-date"] = amz_date
    signed["x-amz-content-sha256"] = payload_sha256
    if credentials.session_token:
        signed["x-amz-security-token"] = credentials.session_token
    names = sorted(signed)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    canonical_query = "&".join(
        f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(v, safe='-_.~')}" for k, v in sorted(query)
    )
    canonical = "\n".join(
        [
            method,
            parts.path or "/",  # already encoded by the caller (see ObjectStore._url)
            canonical_query,
            "".join(f"{n}:{signed[n]}\n" for n in names),
            ";".join(names),
            payload_sha256,
        ]
    )
    scope = f"{day}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = _hmac(
        _hmac(_hmac(_hmac(f"AWS4{credentials.secret_access_key}".encode(), day), region), service), "aws4_request"
    )
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    out = dict(signed)
    out["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={credentials.access_key_id}/{scope}, "
        f"SignedHeaders={';'.join(names)}, Signature={signature}"
    )
    return out


@dataclasses.dataclass(frozen=True)
class ObjectInfo:
    size: int
    etag: str


class ObjectStore:
    """One S3-compatible endpoint, with one set of credentials."""

    def __init__(
        self, endpoint: str, credentials: Credentials, region: str = "us-east-1", *, refuse_local: bool = False
    ) -> None:
        parts = urllib.parse.urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname or not endpoint.isascii():
            raise ValueError(f"endpoint must be an ASCII http(s) URL, not {endpoint!r}")
        self.endpoint = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
        self.host, self.port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
        self.credentials = credentials
        self.region = region
        self.refuse_local = refuse_local

    def _check_endpoint(self, where: str) -> None:
        try:
            found = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            raise ObjectStoreError(0, f"{where}: cannot resolve {self.host}") from None
        for *_, address in found:
            ip = ipaddress.ip_address(str(address[0]).split("%")[0])
            if ip.is_loopback or ip.is_link_local or ip.is_unspecified or ip.is_multicast:
                raise EndpointRefused(0, f"{where}: the endpoint resolves to {ip}, which the operator does not reach")

    def _url(self, bucket: str, key: str) -> str:
        return f"{self.endpoint}/{_quote_path(bucket)}/{_quote_path(key)}"

    def _request(self, method: str, bucket: str, key: str, headers: Mapping[str, str]) -> urllib.response.addinfourl:
        """The response to a signed request, retried on no answer or a 5xx; ObjectStoreError otherwise."""
        where = f"s3 {method} {bucket}/{key}"
        for attempt in range(ATTEMPTS):
            try:
                return self._send(method, bucket, key, headers, where)
            except ObjectStoreError as exc:
                retryable = (exc.status == 0 or exc.status >= 500) and not isinstance(
                    exc, (EndpointRefused, MalformedRequest)
                )
                if not retryable or attempt == ATTEMPTS - 1:
                    raise
            time.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")

    def _send(
        self, method: str, bucket: str, key: str, headers: Mapping[str, str], where: str
    ) -> urllib.response.addinfourl:
        if self.refuse_local:
            self._check_endpoint(where)
        url = self._url(bucket, key)
        now = datetime.datetime.now(datetime.UTC)
        try:
            request = urllib.request.Request(url, method=method)
            for name, value in sign(method, url, headers, self.credentials, self.region, now).items():
                if name != "host":
                    request.add_header(name, value)
            return _OPENER.open(request, timeout=TIMEOUT_SECONDS)  # type: ignore[no-any-return]
        except urllib.error.HTTPError as exc:
            code = _error_code(exc)
            if exc.code == 412:
                raise ObjectChanged(412, f"{where}: the object changed since it was indexed") from None
            raise ObjectStoreError(exc.code, f"{where}: HTTP {exc.code}{f' {code}' if code else ''}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            text = reason.strerror if isinstance(reason, OSError) and reason.strerror else type(reason).__name__
            raise ObjectStoreError(0, f"{where}: {text}") from None
        except (ValueError, UnicodeError, http.client.HTTPException) as exc:
            # e.g. a header value http.client refuses: its message would quote the value (a credential)
            raise MalformedRequest(
                0, f"{where}: the request or its answer is malformed ({type(exc).__name__})"
            ) from None

    def head(self, bucket: str, key: str) -> ObjectInfo:
        with self._request("HEAD", bucket, key, {}) as response:
            try:
                size = int(response.headers["Content-Length"])
            except (KeyError, ValueError, TypeError):
                raise ObjectStoreError(0, f"s3 HEAD {bucket}/{key}: no Content-Length in the answer") from None
            return ObjectInfo(size, str(response.headers.get("ETag", "")))

    def get_range(self, bucket: str, key: str, start: int, end: int, *, if_match: str | None = None) -> bytes:
        """Bytes ``start`` to ``end`` (exclusive) of the object, of version ``if_match`` (an ETag) only."""
        if end <= start:
            return b""
        headers = {"Range": f"bytes={start}-{end - 1}"}
        if if_match:
            headers["If-Match"] = if_match
        with self._request("GET", bucket, key, headers) as response:
            status = int(response.status or 0)
            if status != 206:  # never read an answer that may be the whole object
                raise ObjectStoreError(status, f"s3 GET {bucket}/{key}: the server ignored the Range")
            try:
                data: bytes = response.read(end - start + 1)
            except (OSError, http.client.HTTPException):
                raise ObjectStoreError(0, f"s3 GET {bucket}/{key}: the answer broke off") from None
            if len(data) != end - start:
                raise ObjectStoreError(status, f"s3 GET {bucket}/{key}: asked for {end - start} bytes, got {len(data)}")
            return data

    def chunks(
        self, bucket: str, key: str, size: int, *, if_match: str | None = None, chunk: int = 4 << 20
    ) -> Iterator[bytes]:
        """The whole object in ranges of ``chunk`` bytes: memory stays at one chunk, whatever its size."""
        for start in range(0, size, chunk):
            yield self.get_range(bucket, key, start, min(start + chunk, size), if_match=if_match)


def _error_code(exc: urllib.error.HTTPError) -> str:
    """The S3 error code (``NoSuchKey``, ``AccessDenied`` ...) from an error body, if any."""
    try:
        body = exc.read(4096).decode("utf-8", "replace")
    except OSError:
        return ""
    start, end = body.find("<Code>"), body.find("</Code>")
    code = body[start + 6 : end] if 0 <= start < end else ""
    return code if _ERROR_CODE.match(code) else ""  # an S3 error code, never other text of the answer
