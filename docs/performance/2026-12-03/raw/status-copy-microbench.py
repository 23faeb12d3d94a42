"""The status copy a planning pass starts from: deep copy against planner._working_copy (da05702).

Run from the repository root: PYTHONPATH=operator .venv/bin/python docs/performance/2026-12-03/raw/status-copy-microbench.py
2026-12-03 on the 2-core Intel Xeon VM: deep 115.3 us, working copy 3.8 us, dump 12.7 us (a second run,
beside a CI run: 89.5, 3.4 and 13.4 us).
"""

import timeit

from jobbatch import api, planner

conditions = [
    {"type": t, "status": "True", "reason": "R", "message": "m" * 60,
     "lastTransitionTime": "2026-12-03T15:00:00Z", "observedGeneration": 1}
    for t in ("Accepted", "Running", "Reconciling", "Ready", "Stalled", "Suspended")
]  # fmt: skip
status = api.JobBatchStatus.model_validate({
    "phase": "Running", "observedGeneration": 1,
    "shards": {"total": 1000, "pending": 400, "running": 100, "succeeded": 500, "failed": 0, "retrying": 0},
    "itemCount": 1000, "payloadDigest": "sha256:" + "a" * 64, "progress": "500/1000", "succeededShards": "0-499",
    "startTime": "2026-12-03T15:00:00Z", "highestAttempt": 0, "conditions": conditions,
})  # fmt: skip
n = 2000
print(f"deep   {timeit.timeit(lambda: status.model_copy(deep=True), number=n) / n * 1e6:.1f} us")
print(f"working copy {timeit.timeit(lambda: planner._working_copy(status), number=n) / n * 1e6:.1f} us")
print(f"dump   {timeit.timeit(status.dump, number=n) / n * 1e6:.1f} us")
