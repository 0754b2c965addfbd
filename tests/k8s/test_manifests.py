"""Offline validation of every overlay and chart: real kubectl/helm render, strict schemas, semantics."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from clinrisk import k8s_validate as kv
from clinrisk.rollout import ANNOTATION_PREVIOUS_URI
from clinrisk.usecases import DEFAULT_USECASE

# Overlay -> (use case, environment). The clinical overlays are the base's own names; another use case's
# overlay is an environment overlay plus the use case's component (manifests/usecases/<name>).
OVERLAYS = {
    "kind": ("clinical", "kind"),
    "gke": ("clinical", "gke"),
    "leads-kind": ("leads", "kind"),
    "leads-gke": ("leads", "gke"),
}
# The chart has no default model URI (it would deploy something nothing uploaded): every render names one.
MODEL_URI = "s3://mlflow/1/models/m-abc/artifacts/artifacts/bundle"
SERVING_VALUES: list[dict[str, str]] = [
    {},
    {"canary.percent": "0"},
    {"canary.percent": "25", "model.previousUri": "s3://mlflow/1/aaa/artifacts/bundle"},
    {"canary.percent": "100", "serviceAccount.secrets[0]": "clinrisk-s3"},
]


def _render_serving(
    tools: kv.Tools, repo: Path, values: dict[str, str], **kwargs: Any
) -> list[dict[str, Any]]:
    return kv.render_helm(
        tools, repo / "charts" / "clinrisk-serving", set_values={"model.uri": MODEL_URI, **values}, **kwargs
    )


def _assert_clean(findings: list[kv.Finding]) -> None:
    assert not findings, "\n".join(map(str, findings))


def _server_config(container: dict[str, Any]) -> Any:
    """The server's own config from the args it is given (as `clinrisk serve` parses them)."""
    from clinrisk.config import load_config

    args = container["args"]
    return load_config(None, [args[i + 1] for i, a in enumerate(args) if a == "--set"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_validates(overlay: str, repo: Path, tools: kv.Tools) -> None:
    """Every object under the use case's names (UseCaseNames, what `clinrisk --usecase X rollout|monitor`
    and the deploy step look for): namespace, InferenceService, the server's use case and V1 model name,
    readiness path, the predictor policies' selectors, RoleBinding subjects; the model URI per environment."""
    from clinrisk.usecases import get

    usecase, env = OVERLAYS[overlay]
    names = get(usecase).names
    objs = kv.render_kustomize(tools, repo / "manifests" / "overlays" / overlay)
    _assert_clean(kv.validate_rendered(objs, repo, overlay))
    kinds = {o["kind"] for o in objs}
    assert {
        "Namespace",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "NetworkPolicy",
        "InferenceService",
    } <= kinds
    assert [o["metadata"]["name"] for o in objs if o["kind"] == "Namespace"] == [names.namespace]
    assert all(o["metadata"].get("namespace") == names.namespace for o in objs if o["kind"] != "Namespace")
    (isvc,) = [o for o in objs if o["kind"] == "InferenceService"]
    assert isvc["metadata"]["name"] == names.model_name
    container = isvc["spec"]["predictor"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == f"/v1/models/{names.model_name}"
    cfg = _server_config(container)
    assert (cfg.run.usecase, cfg.serving.model_name) == (usecase, names.model_name)
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Serverless"
    uri = next(e["value"] for e in container["env"] if e["name"] == "STORAGE_URI")
    assert uri.startswith({"kind": "s3://", "gke": "gs://"}[env])
    assert f"/{names.model_name}/" in uri
    assert isvc["metadata"]["annotations"]["clinrisk.io/model-uri"] == uri
    predictor_policies = {
        o["metadata"]["name"]: o["spec"]["podSelector"]["matchLabels"]["serving.kserve.io/inferenceservice"]
        for o in objs
        if o["kind"] == "NetworkPolicy"
        and "serving.kserve.io/inferenceservice" in o["spec"]["podSelector"].get("matchLabels", {})
    }
    assert len(predictor_policies) >= 2  # ingress and the model store's egress
    assert set(predictor_policies.values()) == {names.model_name}, predictor_policies
    own_subjects = [
        s["namespace"]
        for o in objs
        if o["kind"] == "RoleBinding"
        for s in o["subjects"]
        if s["name"].startswith("clinrisk-")
    ]
    assert own_subjects and set(own_subjects) == {names.namespace}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_takes_a_canary(overlay: str, repo: Path, tools: kv.Tools) -> None:
    """The rollout's canary patch applies to the rendered InferenceService as the controller reports it
    (Ready, one rolled-out revision): the new URI in STORAGE_URI and the annotation, the overlay's URI kept
    as the previous one, and the traffic split."""
    from clinrisk.rollout import Phase, plan_canary, read_state

    (isvc,) = [
        o
        for o in kv.render_kustomize(tools, repo / "manifests" / "overlays" / overlay)
        if o["kind"] == "InferenceService"
    ]
    shipped = isvc["metadata"]["annotations"]["clinrisk.io/model-uri"]
    isvc = {
        **isvc,
        "status": {
            "conditions": [{"type": "Ready", "status": "True"}],
            "components": {
                "predictor": {
                    "latestCreatedRevision": "r1",
                    "latestReadyRevision": "r1",
                    "latestRolledoutRevision": "r1",
                    "traffic": [{"revisionName": "r1", "percent": 100, "latestRevision": True}],
                }
            },
        },
    }
    assert read_state(isvc).phase is Phase.STABLE
    patch = plan_canary(isvc, MODEL_URI, 25)
    assert patch["spec"]["predictor"]["canaryTrafficPercent"] == 25
    env = {e["name"]: e.get("value") for e in patch["spec"]["predictor"]["containers"][0]["env"]}
    assert env["STORAGE_URI"] == MODEL_URI
    annotations = patch["metadata"]["annotations"]
    assert annotations["clinrisk.io/model-uri"] == MODEL_URI
    assert annotations[ANNOTATION_PREVIOUS_URI] == shipped  # what a rollback restores


@pytest.mark.parametrize("values", SERVING_VALUES, ids=lambda v: ",".join(v) or "defaults")
def test_serving_chart(values: dict[str, str], repo: Path, tools: kv.Tools) -> None:
    objs = _render_serving(tools, repo, values)
    _assert_clean(kv.validate_rendered(objs, repo, "clinrisk-serving"))
    isvc = next(o for o in objs if o["kind"] == "InferenceService")
    pct = values.get("canary.percent")
    assert isvc["spec"]["predictor"].get("canaryTrafficPercent") == (int(pct) if pct else None)
    storage_uri = next(
        e["value"] for e in isvc["spec"]["predictor"]["containers"][0]["env"] if e["name"] == "STORAGE_URI"
    )
    assert storage_uri == isvc["metadata"]["annotations"]["clinrisk.io/model-uri"] == MODEL_URI


def test_serving_chart_without_a_model_uri_deploys_nothing(repo: Path, tools: kv.Tools) -> None:
    """No placeholder: rendering (so installing) without model.uri fails and names the value."""
    with pytest.raises(kv.K8sValidationError, match="model"):
        kv.render_helm(tools, repo / "charts" / "clinrisk-serving")


def _tabular_usecases() -> list[str]:
    """The use cases the serving image serves (model family "tabular"); the chart serves exactly these."""
    from clinrisk.usecases import get, known

    return sorted(n for n in known() if get(n).model_family == "tabular")


@pytest.mark.parametrize("usecase", [u for u in _tabular_usecases() if u != DEFAULT_USECASE])
def test_every_tabular_usecase_has_overlays(usecase: str, repo: Path) -> None:
    """A tabular use case deploys through kustomize too: its component and one overlay per environment."""
    assert (repo / "manifests" / "usecases" / usecase / "kustomization.yaml").is_file()
    for env in ("kind", "gke"):
        assert OVERLAYS[f"{usecase}-{env}"] == (usecase, env)


@pytest.mark.parametrize("usecase", _tabular_usecases())
def test_serving_chart_serves_the_usecases_names(usecase: str, repo: Path, tools: kv.Tools) -> None:
    """The chart, given only the use case, names the InferenceService, the V1 model (what the server
    answers under, from the args it is given) and the readiness probe as the platform does
    (serving.model_name), so `clinrisk rollout`/`monitor` and the deploy step find it."""
    from clinrisk.config import load_config
    from clinrisk.usecases import get

    names = get(usecase).names
    objs = _render_serving(tools, repo, {"usecase": usecase}, namespace=names.namespace)
    _assert_clean(kv.validate_rendered(objs, repo, "clinrisk-serving"))
    assert all(o["metadata"]["namespace"] == names.namespace for o in objs)
    isvc = next(o for o in objs if o["kind"] == "InferenceService")
    assert isvc["metadata"]["name"] == names.model_name
    container = isvc["spec"]["predictor"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == f"/v1/models/{names.model_name}"
    # The server's own config from the args the chart gives it (as `clinrisk serve` parses them).
    args = container["args"]
    sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    cfg = load_config(None, sets)
    assert (cfg.run.usecase, cfg.serving.model_name) == (usecase, names.model_name)


def test_serving_chart_name_and_namespace_overrides(repo: Path, tools: kv.Tools) -> None:
    """An explicit name reaches the server too (ISVC name = V1 model name); namespace overrides the release's."""
    from clinrisk.config import load_config

    values = {"usecase": "leads", "name": "leads-eu", "namespace": "scoring"}
    objs = _render_serving(tools, repo, values)
    assert {o["metadata"]["namespace"] for o in objs} == {"scoring"}
    isvc = next(o for o in objs if o["kind"] == "InferenceService")
    container = isvc["spec"]["predictor"]["containers"][0]
    args = container["args"]
    cfg = load_config(None, [args[i + 1] for i, a in enumerate(args) if a == "--set"])
    assert isvc["metadata"]["name"] == cfg.serving.model_name == "leads-eu"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v1/models/leads-eu"
    secret = next(o for o in objs if o["kind"] == "Secret")["metadata"]["name"]
    assert container["env"][1]["valueFrom"]["secretKeyRef"]["name"] == secret == "leads-eu-serving-auth"


def test_mlflow_chart(repo: Path, tools: kv.Tools) -> None:
    objs = kv.render_helm(tools, repo / "charts" / "mlflow", namespace="mlflow")
    _assert_clean(kv.validate_rendered(objs, repo, "mlflow"))
    assert {o["kind"] for o in objs} >= {"Deployment", "StatefulSet", "Service", "Secret"}
    deploy = next(o for o in objs if o["kind"] == "Deployment")
    args = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
    assert any(a.startswith("--backend-store-uri=postgresql") for a in args)


@pytest.mark.parametrize("chart", ["clinrisk-serving", "mlflow"])
def test_helm_lint(chart: str, repo: Path, tools: kv.Tools) -> None:
    values = {"model.uri": MODEL_URI} if chart == "clinrisk-serving" else None
    out = kv.helm_lint(tools, repo / "charts" / chart, set_values=values)
    assert "0 chart(s) failed" in out


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"canary.percent": "101"}, "maximum"),
        ({"canary.percent": "-5"}, "minimum"),
        ({"image.tag": "latest"}, "image/tag"),
        ({"model.uri": "not-a-uri"}, "model/uri"),
        ({"usecase": "segmentation"}, "usecase"),  # serves its own model, not with this image
        ({"usecase": "leads", "name": "Leads_EU"}, "name"),
    ],
)
def test_serving_chart_rejects_bad_values(
    values: dict[str, str], message: str, repo: Path, tools: kv.Tools
) -> None:
    with pytest.raises(kv.K8sValidationError, match=message):
        _render_serving(tools, repo, values)


def _kind_objects(repo: Path, tools: kv.Tools) -> list[dict[str, Any]]:
    return kv.render_kustomize(tools, repo / "manifests" / "overlays" / "kind")


def test_schema_rejects_unknown_fields_and_kinds(repo: Path, tools: kv.Tools, crds: Any) -> None:
    objs = _kind_objects(repo, tools)
    isvc = copy.deepcopy(next(o for o in objs if o["kind"] == "InferenceService"))
    isvc["spec"]["predictor"]["containers"][0]["imagePullPolicyy"] = "Always"
    assert any("imagePullPolicyy" in f.message for f in kv.validate_object(isvc, crds=crds))
    role = copy.deepcopy(next(o for o in objs if o["kind"] == "Role"))
    role["rules"][0]["verb"] = ["get"]
    assert any("verb" in f.message for f in kv.validate_object(role, crds=crds))
    unknown = {"apiVersion": "v1", "kind": "Podd", "metadata": {"name": "x"}}
    assert kv.validate_object(unknown, crds=crds)
    other_group = {
        "apiVersion": "serving.kserve.io/v9",
        "kind": "InferenceService",
        "metadata": {"name": "x"},
    }
    assert "no KServe CRD" in kv.validate_object(other_group, crds=crds)[0].message


def test_semantic_checks_catch_what_schemas_miss(repo: Path, tools: kv.Tools) -> None:
    objs = _kind_objects(repo, tools)
    ns = copy.deepcopy(next(o for o in objs if o["kind"] == "Namespace"))
    ns["metadata"]["labels"][kv.RESTRICTED_LABEL] = "baseline"
    isvc = copy.deepcopy(next(o for o in objs if o["kind"] == "InferenceService"))
    pred = isvc["spec"]["predictor"]
    pred["canaryTrafficPercent"] = 150
    pred["minReplicas"] = 0
    c = pred["containers"][0]
    c["name"] = "predictor"
    c["image"] = "clinrisk/serving:latest"
    del c["securityContext"]["runAsNonRoot"]
    del pred["securityContext"]["runAsNonRoot"]
    messages = " | ".join(str(f) for f in kv.semantic_checks([ns, isvc]))
    for expected in ("restricted", "0..100", "kserve-container", "'latest'", "runAsNonRoot", "minReplicas"):
        assert expected in messages, expected
    c["image"] = "clinrisk/serving"
    assert "no tag" in " ".join(map(str, kv.semantic_checks([isvc])))


def test_crd_conversion_strictness(repo: Path) -> None:
    strict = kv.load_crd_schemas(kv.crd_dir(repo), strict=True)
    loose = kv.load_crd_schemas(kv.crd_dir(repo), strict=False)
    key = ("serving.kserve.io/v1beta1", "InferenceService")
    assert strict[key].schema["properties"]["spec"]["additionalProperties"] is False
    assert "additionalProperties" not in loose[key].schema["properties"]["spec"]
    assert ("serving.kserve.io/v1alpha1", "ClusterServingRuntime") in strict


def test_vendored_runtime_validates(repo: Path, crds: Any) -> None:
    doc = yaml.safe_load((kv.crd_dir(repo) / "kserve-lgbserver.clusterservingruntime.yaml").read_text())
    _assert_clean(kv.validate_object(doc, crds=crds))


def test_missing_crd_dir_is_a_clear_error(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    with pytest.raises(kv.K8sValidationError, match=r"CRD directory .* not found"):
        kv.crd_dir(repo)


def test_vendored_upstream_matches_pinned_sha256(repo: Path) -> None:
    assert kv.verify_upstream(repo) == []


def test_vendored_upstream_tampering_is_detected(repo: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "repo"
    shutil.copytree(kv.upstream_dir(repo), kv.upstream_dir(copy))
    victim = kv.crd_dir(copy) / "kserve-lgbserver.clusterservingruntime.yaml"
    victim.write_text(victim.read_text() + "\n# edited\n")
    (kv.upstream_dir(copy) / "stray.yaml").write_text("kind: ConfigMap\n")
    problems = kv.verify_upstream(copy)
    assert any("kserve-lgbserver.clusterservingruntime.yaml: sha256" in p for p in problems), problems
    assert any("stray.yaml: vendored but not listed" in p for p in problems), problems


def test_nothing_reads_the_sibling_shared_folder(repo: Path) -> None:
    """A clone has no ../shared: no code, script or test the suite runs may depend on it."""
    offenders = []
    for folder in ("src", "tests", "scripts", "pipelines", "components", "tools"):
        for path in (repo / folder).rglob("*"):
            if path.suffix in {".py", ".sh"} and path.is_file() and path.name != "test_manifests.py":
                code = [
                    ln
                    for ln in path.read_text(errors="replace").splitlines()
                    if not ln.lstrip().startswith("#")
                ]
                if any("../shared" in ln for ln in code):
                    offenders.append(str(path.relative_to(repo)))
    assert offenders == []


def test_skaffold_references_existing_files(repo: Path) -> None:
    doc = yaml.safe_load((repo / "skaffold.yaml").read_text())
    assert doc["apiVersion"].startswith("skaffold/")
    for artifact in doc["build"]["artifacts"]:
        script, which = artifact["custom"]["buildCommand"].split()
        assert (repo / artifact["context"] / script).is_file()
        assert (repo / "images" / f"{which}.Dockerfile").is_file()
    for profile in doc["profiles"]:
        for path in (profile.get("manifests") or {}).get("kustomize", {}).get("paths", []):
            assert (repo / path / "kustomization.yaml").is_file()


@pytest.mark.parametrize("usecase", ["clinical", "leads"])
def test_deploy_script_applies_the_usecases_overlay_with_the_model_uri(
    usecase: str, repo: Path, tools: kv.Tools, tmp_path: Path
) -> None:
    """scripts/k8s/deploy.sh renders the use case's overlay with MODEL_URI patched into its InferenceService
    and applies that (kubectl stands in as a recorder for everything but `kustomize`)."""
    import os
    import subprocess

    from clinrisk.usecases import get

    names = get(usecase).names
    recorder = tmp_path / "kubectl"
    recorder.write_text(
        "#!/usr/bin/env bash\n"
        f'if [[ "$1" == kustomize ]]; then exec {tools.kubectl} "$@"; fi\n'
        f'echo "$*" >> {tmp_path}/calls\n'
        'if [[ "$1 $2" == "apply --server-side" ]]; then cp "$4" ' + f"{tmp_path}/applied.yaml; fi\n"
    )
    recorder.chmod(0o755)
    env = {**os.environ, "KUBECTL": str(recorder), "MODEL_URI": MODEL_URI, "USECASE": usecase, "TAG": "0.1.0"}
    proc = subprocess.run(
        ["bash", str(repo / "scripts" / "k8s" / "deploy.sh"), "kind"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    objs = [o for o in yaml.safe_load_all((tmp_path / "applied.yaml").read_text()) if o]
    (isvc,) = [o for o in objs if o["kind"] == "InferenceService"]
    assert (isvc["metadata"]["namespace"], isvc["metadata"]["name"]) == (names.namespace, names.model_name)
    env_vars = {e["name"]: e.get("value") for e in isvc["spec"]["predictor"]["containers"][0]["env"]}
    assert env_vars["STORAGE_URI"] == isvc["metadata"]["annotations"]["clinrisk.io/model-uri"] == MODEL_URI
    assert f"-n {names.namespace} get inferenceservice {names.model_name}" in (tmp_path / "calls").read_text()


def test_deploy_script_refuses_an_unknown_usecase(repo: Path, tmp_path: Path) -> None:
    import os
    import subprocess

    env = {**os.environ, "KUBECTL": "/bin/false", "MODEL_URI": MODEL_URI, "USECASE": "nope"}
    proc = subprocess.run(
        ["bash", str(repo / "scripts" / "k8s" / "deploy.sh"), "kind"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: USECASE: unknown use case 'nope'; known:")


def test_dask_policy_and_rbac_admit_the_train_pod_where_kfp_runs_it(repo: Path, tools: kv.Tools) -> None:
    """manifests/dask: the DaskCluster's pods take ingress from pods with the train pod's label (the compiled
    pipeline sets it) in their own namespace and in kubeflow, where standalone KFP runs every pipeline pod
    (namespaceSelector AND podSelector, one peer); the client egress policy selects the same label; and the
    train Role is bound to kubeflow/pipeline-runner, the account KFP runs the train pod as."""
    from clinrisk.config.modeling import DaskConfig
    from clinrisk.dask_k8s import CLIENT_LABEL

    label = dict([CLIENT_LABEL])
    objs = kv.render_kustomize(tools, repo / "manifests" / "dask")
    policies = {o["metadata"]["name"]: o for o in objs if o["kind"] == "NetworkPolicy"}
    dask = policies["clinrisk-train-dask"]
    assert dask["metadata"]["namespace"] == DaskConfig().namespace
    (rule,) = dask["spec"]["ingress"]
    clients = [p for p in rule["from"] if p.get("podSelector", {}).get("matchLabels") == label]
    in_namespace = {"podSelector": {"matchLabels": label}}
    from_kubeflow = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kubeflow"}},
        "podSelector": {"matchLabels": label},
    }
    assert len(clients) == 2 and in_namespace in clients and from_kubeflow in clients, clients
    assert policies["clinrisk-dask-client-egress"]["spec"]["podSelector"] == {"matchLabels": label}
    (binding,) = [
        o for o in objs if o["kind"] == "RoleBinding" and o["metadata"]["name"] == "clinrisk-train-dask"
    ]
    subjects = {(s["kind"], s.get("namespace"), s["name"]) for s in binding["subjects"]}
    assert subjects == {
        ("ServiceAccount", DaskConfig().namespace, "clinrisk-train-dask"),
        ("ServiceAccount", "kubeflow", "pipeline-runner"),
    }
