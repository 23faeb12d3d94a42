# The operator image: `jobbatch run` as a non-root user, fine with a read-only root filesystem.
# Build with images/build.sh (it fills images/wheels/ first, so this build needs no network).
# BASE is any image with python3 >= 3.11 and its venv module: python:3.11-slim by default,
# or the Debian base images/build.sh makes with debootstrap where no registry is reachable.
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
COPY images/wheels /wheels
RUN python3 -m venv /opt/jobbatch \
 && /opt/jobbatch/bin/pip install --no-cache-dir --no-index --find-links /wheels jobbatch-operator

FROM ${BASE}
COPY --from=build /opt/jobbatch /opt/jobbatch
ENV PATH=/opt/jobbatch/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["jobbatch"]
CMD ["run"]
