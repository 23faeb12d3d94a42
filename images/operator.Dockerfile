# The operator image: `jobbatch run` as a non-root user, fine with a read-only root filesystem.
# Build with images/build.sh (it fills images/wheels/ first, so pip needs no network here).
# BASE is any Debian-based image with python3 >= 3.11 and its venv module: python:3.11-slim by
# default, or the Debian base images/build.sh makes with debootstrap where no registry is reachable.
# The same image as `make images` builds (e2e/images.py), which the tests run.
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
COPY images/wheels /wheels
RUN python3 -m venv /opt/jobbatch \
 && /opt/jobbatch/bin/pip install --no-cache-dir --no-index --find-links /wheels jobbatch-operator

FROM ${BASE}
# tini as PID 1: it forwards SIGTERM and reaps children (the payload-checking sandboxes).
RUN command -v tini >/dev/null || (apt-get update -qq && apt-get install -y -qq --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*)
COPY --from=build /opt/jobbatch /opt/jobbatch
ENV PATH=/opt/jobbatch/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["/usr/bin/tini", "--", "jobbatch"]
CMD ["run"]
