# The example worker (examples/worker/worker.py) with the jobbatch worker SDK.
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
COPY images/wheels /wheels
RUN python3 -m venv /opt/jobbatch \
 && /opt/jobbatch/bin/pip install --no-cache-dir --no-index --find-links /wheels jobbatch-operator

FROM ${BASE}
COPY --from=build /opt/jobbatch /opt/jobbatch
COPY examples/worker/worker.py /app/worker.py
ENV PATH=/opt/jobbatch/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
ENTRYPOINT ["python", "/app/worker.py"]
