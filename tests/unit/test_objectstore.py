"""The S3 client signs requests as AWS documents them (no server here; tests/integration has one)."""

from __future__ import annotations

import datetime

import pytest

from jobbatch import objectstore

# The example of AWS's "Signature Calculations for the Authorization Header" page (GET Object).
EXAMPLE = objectstore.Credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
EXAMPLE_TIME = datetime.datetime(2013, 5, 24, tzinfo=datetime.UTC)


def test_a_ranged_get_is_signed_as_in_the_aws_example() -> None:
    headers = objectstore.sign(
        "GET",
        "https://examplebucket.s3.amazonaws.com/test.txt",
        {"Range": "bytes=0-9"},
        EXAMPLE,
        "us-east-1",
        EXAMPLE_TIME,
    )
    assert headers["authorization"] == (
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
        "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
    )
    assert headers["x-amz-date"] == "20130524T000000Z"
    assert headers["x-amz-content-sha256"] == objectstore.EMPTY_SHA256


def test_keys_are_encoded_once_in_the_url_and_in_the_signature() -> None:
    store = objectstore.ObjectStore("http://127.0.0.1:7070/", EXAMPLE)
    assert store._url("imports", "2026/a b+c.csv") == "http://127.0.0.1:7070/imports/2026/a%20b%2Bc.csv"


def test_credentials_never_print_their_secret() -> None:
    assert "EXAMPLEKEY" not in repr(EXAMPLE)
    assert "EXAMPLEKEY" not in str(EXAMPLE)


def test_an_endpoint_must_be_an_http_url() -> None:
    with pytest.raises(ValueError, match="http"):
        objectstore.ObjectStore("s3.example.com", EXAMPLE)


@pytest.mark.parametrize("address", ["127.0.0.1", "169.254.169.254", "[::1]", "0.0.0.0"])
def test_the_operator_never_sends_requests_to_its_own_or_link_local_addresses(address: str) -> None:
    store = objectstore.ObjectStore(f"http://{address}:9000", EXAMPLE, refuse_local=True)
    with pytest.raises(objectstore.EndpointRefused, match="does not reach"):
        store.head("bucket", "key")


def test_a_credential_http_refuses_is_an_error_that_does_not_quote_it() -> None:
    # A Secret made with `echo ... | base64` ends in a line break, which http.client refuses to send,
    # quoting the value; nothing is sent (the refusal comes before connecting).
    store = objectstore.ObjectStore("http://127.0.0.1:9", objectstore.Credentials("AKIDLEAKY\n", "s"))
    with pytest.raises(objectstore.MalformedRequest) as caught:
        store.head("bucket", "key")
    assert "AKIDLEAKY" not in str(caught.value)
