#!/usr/bin/env bash
# MinIO for MLflow artifacts and KServe model storage on kind (development credentials, one replica).
set -euo pipefail
# shellcheck source=scripts/k8s/lib.sh
source "$(dirname "$0")/lib.sh"
ACCESS_KEY="${MINIO_ACCESS_KEY:-clinrisk}"
SECRET_KEY="${MINIO_SECRET_KEY:-clinrisk-minio-dev}"

log "MinIO ($MINIO_IMAGE)"
"$KUBECTL" create namespace minio --dry-run=client -o yaml | "$KUBECTL" apply -f -
"$KUBECTL" -n minio create secret generic minio-root \
  --from-literal=MINIO_ROOT_USER="$ACCESS_KEY" --from-literal=MINIO_ROOT_PASSWORD="$SECRET_KEY" \
  --dry-run=client -o yaml | "$KUBECTL" apply -f -
# Data on a PersistentVolumeClaim (kind's default StorageClass), not emptyDir: registered bundles and MLflow
# artifacts survive a MinIO pod restart. Recreate: the RWO volume cannot be attached by two pods at once.
"$KUBECTL" apply -f - <<YAML
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: minio-data, namespace: minio}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: ${MINIO_STORAGE:-10Gi}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: minio, namespace: minio}
spec:
  replicas: 1
  strategy: {type: Recreate}
  selector: {matchLabels: {app: minio}}
  template:
    metadata: {labels: {app: minio}}
    spec:
      containers:
        - name: minio
          image: $MINIO_IMAGE
          args: ["server", "/data", "--console-address", ":9001"]
          envFrom: [{secretRef: {name: minio-root}}]
          ports: [{containerPort: 9000}, {containerPort: 9001}]
          readinessProbe: {httpGet: {path: /minio/health/ready, port: 9000}}
          volumeMounts: [{name: data, mountPath: /data}]
      volumes: [{name: data, persistentVolumeClaim: {claimName: minio-data}}]
---
apiVersion: v1
kind: Service
metadata: {name: minio, namespace: minio}
spec:
  selector: {app: minio}
  ports: [{name: api, port: 9000}, {name: console, port: 9001}]
YAML
wait_deployments minio
"$KUBECTL" -n minio run mc-mb --rm -i --restart=Never --image "$MC_IMAGE" --command -- sh -c \
  "mc alias set local http://minio.minio.svc:9000 '$ACCESS_KEY' '$SECRET_KEY' && mc mb -p local/mlflow"
