from __future__ import annotations

import pytest

from jobbatch.ranges import IndexRanges


@pytest.mark.parametrize(
    ("text", "canonical"),
    [("", ""), ("0", "0"), ("0-3,7", "0-3,7"), ("3,1,2", "1-3"), ("0-2,3-5", "0-5"), (" 4 , 6-7 ", "4,6-7")],
)
def test_parse_and_render(text: str, canonical: str) -> None:
    assert str(IndexRanges.parse(text)) == canonical


def test_membership_length_and_union() -> None:
    r = IndexRanges.parse("0-41,43,45-99")
    assert 41 in r
    assert 43 in r
    assert 45 in r
    assert 42 not in r
    assert 44 not in r
    assert 100 not in r
    assert len(r) == 42 + 1 + 55
    assert str(r.union([42, 44])) == "0-99"
    assert str(IndexRanges.of([5, 1, 2, 9])) == "1-2,5,9"


@pytest.mark.parametrize("bad", ["a", "1-", "-1", "3-1"])
def test_bad_text_is_rejected(bad: str) -> None:
    with pytest.raises(ValueError, match="bad"):
        IndexRanges.parse(bad)


def test_first_missing_walks_gaps() -> None:
    r = IndexRanges.parse("0-9,12,20-99999")
    assert r.first_missing(0, 100_000, 5) == [10, 11, 13, 14, 15]
    assert r.first_missing(0, 100_000, 5, skip={11, 13}) == [10, 14, 15, 16, 17]
    assert r.first_missing(15, 18, 10) == [15, 16, 17]
    assert IndexRanges().first_missing(0, 3, 10) == [0, 1, 2]
    assert IndexRanges.parse("0-2").first_missing(0, 3, 10) == []


def test_scattered_set_renders_compactly() -> None:
    # 100,000 shards with one failure in every 1,000: the succeeded set stays short.
    failed = IndexRanges.of(range(500, 100_000, 1000))
    succeeded = IndexRanges.of(i for i in range(100_000) if i not in failed)
    assert len(succeeded) == 99_900
    assert 500 not in succeeded
    assert 501 in succeeded
    assert len(str(succeeded)) < 1500
    assert len(str(failed)) < 700
