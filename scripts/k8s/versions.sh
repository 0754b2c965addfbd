#!/usr/bin/env bash
# Pinned versions of everything `make cluster` installs. Update manifests/upstream (scripts/k8s/vendor-upstream.sh),
# tools/controlplane/*/go.mod and clinrisk.k8s_validate.KSERVE_VERSION together with these.
# shellcheck disable=SC2034  # sourced by the other scripts
KIND_NODE_IMAGE="kindest/node:v1.34.0@sha256:7416a61b42b1662ca6ca89f02028ac133a309a2a30ba309614e8ec94d976dc5a"  # kind v0.30.0's default, pinned by digest as kind's release notes ask
CERT_MANAGER_VERSION="v1.18.2"
KNATIVE_VERSION="knative-v1.19.0"        # serving-crds/serving-core
KOURIER_VERSION="knative-v1.19.0"        # net-kourier
KSERVE_VERSION="v0.20.0"
KFP_VERSION="2.14.3"                     # standalone Kubeflow Pipelines (platform-agnostic-emissary)
MINIO_IMAGE="quay.io/minio/minio:RELEASE.2025-04-22T22-12-26Z"
MC_IMAGE="quay.io/minio/mc:RELEASE.2025-04-16T18-13-26Z"
CLUSTER_NAME="${CLUSTER_NAME:-clinrisk}"
NAMESPACE="${NAMESPACE:-clinrisk}"
