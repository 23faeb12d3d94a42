# A worker image: one worker script with the jobbatch worker SDK alone (jobbatch-worker: pydantic, no
# kopf, no Kubernetes client), and any pinned extras.
#   WORKER=examples/worker/worker.py                              -> jobbatch-example-worker
#   WORKER=examples/06-import/worker.py REQUIREMENTS=pg8000==...  -> jobbatch-import-worker
# images/build.sh fills images/wheels/ with every wheel first, so pip needs no network here.
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
ARG REQUIREMENTS=""
COPY images/wheels /wheels
RUN python3 -m venv /opt/jobbatch \
 && /opt/jobbatch/bin/pip install --no-cache-dir --no-index --find-links /wheels jobbatch-worker ${REQUIREMENTS}

FROM ${BASE}
ARG WORKER=examples/worker/worker.py
# tini as PID 1: a PID 1 ignores a SIGTERM it has no handler for, and a stopped shard must exit.
RUN command -v tini >/dev/null || (apt-get update -qq && apt-get install -y -qq --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*)
COPY --from=build /opt/jobbatch /opt/jobbatch
COPY ${WORKER} /app/worker.py
ENV PATH=/opt/jobbatch/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
ENTRYPOINT ["/usr/bin/tini", "--", "python", "/app/worker.py"]
