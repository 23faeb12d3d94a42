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


def test_difference_and_gaps() -> None:
    r = IndexRanges.parse("0-9,20-29")
    assert str(r.difference(IndexRanges.parse("3-5,8-21,29"))) == "0-2,6-7,22-28"
    assert str(r.difference(IndexRanges())) == "0-9,20-29"
    assert not IndexRanges.parse("3").difference(IndexRanges.parse("0-9"))
    assert list(r.gaps(0, 35)) == [(10, 19), (30, 34)]
    assert list(r.gaps(5, 25)) == [(10, 19)]
    assert list(IndexRanges().gaps(0, 3)) == [(0, 2)]
    assert list(IndexRanges.parse("0-2").gaps(0, 3)) == []


def test_scattered_set_renders_compactly() -> None:
    # 100,000 shards with one failure in every 1,000: the succeeded set stays short.
    failed = IndexRanges.of(range(500, 100_000, 1000))
    succeeded = IndexRanges.of(i for i in range(100_000) if i not in failed)
    assert len(succeeded) == 99_900
    assert 500 not in succeeded
    assert 501 in succeeded
    assert len(str(succeeded)) < 1500
    assert len(str(failed)) < 700
