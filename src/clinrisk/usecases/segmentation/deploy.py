"""The segmentation predictor's KServe InferenceService, parameterised from the config's serving names.

The same shape as the platform's ``manifests/base/inferenceservice.yaml`` (Knative mode, custom container
named ``kserve-container`` so KServe's storage initializer downloads ``STORAGE_URI`` into /mnt/models, the
model URI in the ``clinrisk.io/model-uri`` annotation, restricted security context, probes), so the shared
canary rollout (:mod:`clinrisk.rollout`: canary → promote → rollback) drives it unchanged. What differs: the
names (``serving.model_name`` / ``serving.namespace``, both ``segmentation`` by default), the command
(``clinrisk segmentation serve --ckpt /mnt/models/best.npz``: the storage URI is a registered version's
checkpoint folder) and the image, the serving image plus the JAX stack (:func:`serving_image`), which the
shared serving image leaves out.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from clinrisk import __version__
from clinrisk.images import IMAGE_REPOSITORY
from clinrisk.usecases.segmentation.loading import CHECKPOINT

if TYPE_CHECKING:
    from clinrisk.config import ClinriskConfig

MODEL_DIR = "/mnt/models"  # where KServe's storage initializer puts STORAGE_URI
PORT = 8080


def serving_image() -> str:
    """The segmentation predictor's image (CLINRISK_SEGMENTATION_SERVING_IMAGE overrides it)."""
    return os.environ.get(
        "CLINRISK_SEGMENTATION_SERVING_IMAGE", f"{IMAGE_REPOSITORY}/segmentation-serving:{__version__}"
    )


def inference_service(
    cfg: ClinriskConfig, storage_uri: str, image: str | None = None, canary_percent: int | None = None
) -> dict[str, Any]:
    """The InferenceService document serving the checkpoint folder at ``storage_uri``."""
    from clinrisk.rollout import ANNOTATION_MODEL_URI, CONTAINER_NAME, STORAGE_ENV, validate_model_uri

    uri = validate_model_uri(storage_uri)
    name, namespace = cfg.serving.model_name, cfg.serving.namespace
    predictor: dict[str, Any] = {
        "minReplicas": 1,
        "maxReplicas": 3,
        "scaleMetric": "concurrency",
        "scaleTarget": 4,
        "timeout": 60,
        "serviceAccountName": f"{name}-predictor",
        "annotations": {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(PORT),
            "prometheus.io/path": "/metrics",
            "prometheus.kserve.io/port": str(PORT),
            "prometheus.kserve.io/path": "/metrics",
        },
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "runAsGroup": 10001,
            "fsGroup": 10001,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": CONTAINER_NAME,
                "image": image or serving_image(),
                "imagePullPolicy": "IfNotPresent",
                "command": ["clinrisk", "segmentation", "serve"],
                "args": [
                    "--ckpt",
                    f"{MODEL_DIR}/{CHECKPOINT}",
                    "--set",
                    "serving.host=0.0.0.0",
                    "--set",
                    f"serving.http_port={PORT}",
                    "--set",
                    "serving.require_auth=true",
                ],
                "env": [
                    {"name": STORAGE_ENV, "value": uri},
                    {
                        "name": "CLINRISK_SERVING_TOKEN",
                        "valueFrom": {"secretKeyRef": {"name": f"{name}-serving-auth", "key": "token"}},
                    },
                ],
                "ports": [{"name": "http1", "containerPort": PORT, "protocol": "TCP"}],
                "readinessProbe": {
                    "httpGet": {"path": f"/v1/models/{name}", "port": PORT},
                    "initialDelaySeconds": 10,
                    "periodSeconds": 5,
                    "failureThreshold": 12,
                },
                "livenessProbe": {
                    "httpGet": {"path": "/", "port": PORT},
                    "initialDelaySeconds": 30,
                    "periodSeconds": 10,
                    "timeoutSeconds": 2,
                    "failureThreshold": 6,
                },
                "resources": {
                    "requests": {"cpu": "1", "memory": "1Gi"},
                    "limits": {"cpu": "2", "memory": "2Gi"},
                },
                "securityContext": {
                    "runAsNonRoot": True,
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "capabilities": {"drop": ["ALL"]},
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
            }
        ],
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}}],
    }
    if canary_percent is not None:
        predictor["canaryTrafficPercent"] = canary_percent
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/name": name, "clinrisk.io/usecase": "segmentation"},
            "annotations": {
                "serving.kserve.io/deploymentMode": "Serverless",
                "serving.kserve.io/enable-prometheus-scraping": "true",
                ANNOTATION_MODEL_URI: uri,
            },
        },
        "spec": {"predictor": predictor},
    }
