"""Record boundaries of JSON Lines and CSV, whatever the chunks the bytes arrive in."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobbatch import records


def index(fmt: records.Format, data: bytes, shard_size: int, cuts: list[int]) -> records.Indexer:
    indexer = records.Indexer(fmt, shard_size)
    seen: list[tuple[int, bytes]] = []
    last = 0
    for cut in [*sorted(cuts), len(data)]:
        seen += indexer.feed(data[last:cut])
        last = cut
    seen += indexer.finish()
    assert [i for i, _ in seen] == list(range(indexer.count))
    return indexer


def shards(fmt: records.Format, data: bytes, indexer: records.Indexer) -> list[list[object]]:
    offsets = indexer.offsets
    return [list(records.parse(fmt, data[a:b], indexer.header)) for a, b in itertools.pairwise(offsets)]


def test_json_lines_shards_hold_their_records_and_skip_blank_lines() -> None:
    data = b'{"n":0}\n\n{"n":1}\n  \n{"n":2}\n{"n":3}\n{"n":4}'
    indexer = index("JSONLines", data, 2, [3, 9, 10])
    assert indexer.count == 5
    assert indexer.offsets == [0, data.index(b'{"n":2}'), data.index(b'{"n":4}'), len(data)]
    assert shards("JSONLines", data, indexer) == [[{"n": 0}, {"n": 1}], [{"n": 2}, {"n": 3}], [{"n": 4}]]


def test_csv_records_may_hold_quoted_line_ends_and_quotes() -> None:
    data = b'id,text\r\n1,"a\nb"\r\n2,"say ""hi"""\r\n\r\n3,plain\r\n'
    indexer = index("CSV", data, 2, [5, 11, 12, 20])
    assert indexer.header == b"id,text\r\n"
    assert indexer.count == 3
    assert shards("CSV", data, indexer) == [
        [{"id": "1", "text": "a\nb"}, {"id": "2", "text": 'say "hi"'}],
        [{"id": "3", "text": "plain"}],
    ]


def test_an_empty_file_has_no_shards() -> None:
    indexer = index("JSONLines", b"", 10, [])
    assert (indexer.count, indexer.offsets) == (0, [0])


@pytest.mark.parametrize(
    ("fmt", "data", "reason"),
    [
        ("CSV", b"", "no header"),
        ("CSV", b'a,b\n1,"unclosed\n', "unclosed quote"),
    ],
)
def test_malformed_files_are_refused(fmt: records.Format, data: bytes, reason: str) -> None:
    with pytest.raises(records.RecordError, match=reason):
        index(fmt, data, 1, [])


def test_a_record_over_the_limit_is_refused_before_it_is_held_whole() -> None:
    indexer = records.Indexer("JSONLines", 1, max_record_bytes=100)
    list(indexer.feed(b'{"ok":1}\n' + b"x" * 60))
    with pytest.raises(records.RecordError, match="over 100 bytes") as caught:
        list(indexer.feed(b"x" * 60))
    assert caught.value.reason == "PayloadRecordTooLarge"


def test_a_csv_record_with_the_wrong_number_of_fields_is_an_error() -> None:
    with pytest.raises(ValueError, match="more fields"):
        list(records.parse("CSV", b"1,2,3\n", b"a,b\n"))
    with pytest.raises(ValueError, match="fewer fields"):
        list(records.parse("CSV", b"1\n", b"a,b\n"))


texts = st.text(alphabet=st.sampled_from(["a", ",", '"', "\n", "é", " "]), max_size=12)


@settings(max_examples=200, derandomize=True)
@given(
    rows=st.lists(st.lists(texts, min_size=2, max_size=2), max_size=20),
    shard_size=st.integers(1, 5),
    cuts=st.lists(st.integers(0, 400), max_size=6),
)
def test_csv_shards_reassemble_the_file_whatever_the_chunks(
    rows: list[list[str]], shard_size: int, cuts: list[int]
) -> None:
    import csv
    import io

    out = io.StringIO(newline="")
    writer = csv.writer(out, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
    writer.writerow(["x", "y"])
    # csv writes a row of two empty strings as a blank line (",\n" is not blank); keep rows non-blank.
    kept = [r for r in rows if r != ["", ""]]
    writer.writerows(kept)
    data = out.getvalue().encode()
    indexer = index("CSV", data, shard_size, [c for c in cuts if c <= len(data)])
    got = shards("CSV", data, indexer)
    assert [row for shard in got for row in shard] == [{"x": a, "y": b} for a, b in kept]
    assert all(len(shard) == shard_size for shard in got[:-1])


@settings(max_examples=200, derandomize=True)
@given(
    values=st.lists(st.one_of(st.integers(), st.text(max_size=5), st.none()), max_size=30),
    blank=st.lists(st.booleans(), max_size=30),
    shard_size=st.integers(1, 7),
    cuts=st.lists(st.integers(0, 300), max_size=6),
)
def test_json_lines_shards_reassemble_the_file_whatever_the_chunks(
    values: list[object], blank: list[bool], shard_size: int, cuts: list[int]
) -> None:
    lines = []
    for i, value in enumerate(values):
        lines.append(json.dumps(value))
        if i < len(blank) and blank[i]:
            lines.append("")
    data = "\n".join(lines).encode()
    indexer = index("JSONLines", data, shard_size, [c for c in cuts if c <= len(data)])
    got = shards("JSONLines", data, indexer)
    assert [v for shard in got for v in shard] == values
    assert indexer.count == len(values)
    assert all(len(shard) == shard_size for shard in got[:-1])


def test_the_indexer_and_the_parser_agree_on_what_a_csv_record_is() -> None:
    # A line of spaces is a record to the csv module (a one-field row), so to the indexer too.
    data = b"name\nAnn\n \n\r\nBo\n"
    indexer = index("CSV", data, 1, [])
    assert indexer.count == 3
    assert shards("CSV", data, indexer) == [[{"name": "Ann"}], [{"name": " "}], [{"name": "Bo"}]]


def test_a_csv_file_of_bare_carriage_returns_is_refused_not_read_as_empty() -> None:
    with pytest.raises(records.RecordError, match="not one record"):
        index("CSV", b"id,name\r1,Ann\r2,Bo\r", 1, [])


def test_a_byte_order_mark_is_not_part_of_the_first_name() -> None:
    data = b"\xef\xbb\xbfid,name\n1,Ann\n"
    indexer = index("CSV", data, 1, [])
    assert indexer.header == b"id,name\n"
    assert shards("CSV", data, indexer) == [[{"id": "1", "name": "Ann"}]]


def test_a_header_must_name_every_column_once() -> None:
    with pytest.raises(records.RecordError, match="distinct and non-empty"):
        index("CSV", b"id,id\n1,2\n", 1, [])


def test_the_record_limit_holds_for_records_that_end_inside_one_chunk() -> None:
    indexer = records.Indexer("JSONLines", 1, max_record_bytes=100)
    with pytest.raises(records.RecordError, match="over 100 bytes"):
        list(indexer.feed(b'{"ok":1}\n' + b"x" * 150 + b"\n"))
