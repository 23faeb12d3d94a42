#!/usr/bin/env bash
# The whole path on a kind cluster, for users with Docker and internet access:
# build the images, create a cluster, load the images, install the chart, run an example to completion.
#
#   bash e2e/kind/run.sh            # cluster "jobbatch"; delete it with: kind delete cluster --name jobbatch
#
# Needs: docker, kind, kubectl, helm on PATH. It cannot run on the project's own CI machines: they reach
# no container registry, and kind pulls its node image from one.
set -euo pipefail
cd "$(dirname "$0")/../.."
CLUSTER=${CLUSTER:-jobbatch}
TAG=${TAG:-0.1.0}

for tool in docker kind kubectl helm; do
  command -v "$tool" >/dev/null || { echo "needs $tool on PATH" >&2; exit 1; }
done

bash images/build.sh "$TAG"
kind get clusters | grep -qx "$CLUSTER" || kind create cluster --name "$CLUSTER" --wait 120s
kind load docker-image --name "$CLUSTER" "jobbatch-operator:$TAG" "jobbatch-example-worker:$TAG"

helm upgrade --install jobbatch charts/jobbatch-operator --namespace jobbatch-system --create-namespace \
  --set image.tag="$TAG" --set priorityClasses.create=true --wait --timeout 180s
kubectl -n jobbatch-system rollout status deployment/jobbatch-jobbatch-operator --timeout=120s
helm test jobbatch --namespace jobbatch-system

# The example runs the real worker image here (the sim.* annotations only matter on kwok nodes).
sed "s/jobbatch-example-worker:0.1.0/jobbatch-example-worker:$TAG/" examples/01-minimal/jobbatch.yaml | kubectl apply -f -
kubectl wait --for=condition=Complete jobbatch/minimal --timeout=300s
kubectl get jobbatch minimal
kubectl describe jobbatch minimal | sed -n '/Events:/,$p'
