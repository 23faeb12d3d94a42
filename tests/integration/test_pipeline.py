"""The import pipeline (examples/06-import) on the real node, small, with chaos: e2e/pipeline.py.

`make e2e` runs it at full size (100,000 records, 100 shards); here 3,000 records in 10 shards keep
`make test` short while every part is real: the S3 server, PostgreSQL, the worker image, the operator
SIGKILLed mid-run and a worker pod deleted mid-shard.
"""

from __future__ import annotations

from pathlib import Path

from e2e import pipeline


async def test_the_import_pipeline_loads_every_record_exactly_once_through_chaos(
    kubeconfig: Path, namespace: str, crd: None, real_node: str, tmp_path: Path
) -> None:
    report = await pipeline.run(
        kubeconfig,
        namespace,
        tmp_path,
        records=3_000,
        shard_size=300,
        parallelism=4,
        kills=1,
        deletions=1,
        work_ms=5,  # 1.5 s of a shard's "work" before its insert: where the deletion lands
    )
    print(report)  # shown with -s, and under a failure
    assert report.operator_kills == 1
    assert len(report.pods_deleted) == 1
    assert report.retries >= 1  # the deleted pod's attempt failed and was retried
    assert report.rows == 3_000  # shard 0's 300 rows were there before: its run added none
    assert report.preloaded == 300
    assert report.content_matches  # ids, names (quotes, commas) and emails exactly as in the file
    assert report.ok(), report
