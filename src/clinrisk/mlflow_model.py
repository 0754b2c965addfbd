"""The registered MLflow model: one contract with the KServe V1 endpoint.

The pyfunc takes the same raw-history instances as ``POST /v1/models/<name>:predict`` (static attributes
plus ``history``, see docs/contracts.md) and scores them through the serving engine itself
(:class:`clinrisk.serving.inference.ServingEngine`: the same request validation, feature building, model call
and threshold), so a probability from ``mlflow models serve`` equals KServe's bit for bit. It answers with
KServe's ``predictions`` list (probability, label, threshold, out-of-distribution flags, warnings, reasons).

Inputs accepted by :meth:`ClinriskPyfunc.predict`:

- a list of instances (what ``{"inputs": [...]}`` gives through ``mlflow models serve``; MLflow's scoring
  server turns ``{"instances": [...]}`` into columns, which loses the per-instance ``history``, so over
  MLflow's HTTP endpoint the same instance objects go under ``inputs``);
- a V1 body ``{"instances": [...], "parameters": {...}}`` (in-process ``model.predict(body)``);
- a pandas DataFrame, one row per instance (``dataframe_records``; NaN cells count as absent fields).

The model's code travels with it (``code_paths``: the clinrisk package) and its requirements are the
third-party packages the serving path imports, pinned to the versions that logged it, so
``mlflow models serve -m models:/<name>@challenger`` can rebuild the environment from PyPI.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from mlflow.pyfunc import PythonModel

from clinrisk.tracking import BUNDLE_ARTIFACT_KEY

# The distributions the serving code path imports (clinrisk itself comes from code_paths). The logged pins
# are the installed versions of these (mlflow adds itself).
SERVING_REQUIREMENTS = (
    "numpy",
    "pandas",
    "polars",
    "pyarrow",
    "lightgbm",
    "scikit-learn",
    "pydantic",
    "pyyaml",
)
PARAM_TOP_K = "reason_codes_top_k"
# The logged model (MLflow "models from code"): run at load time, after MLflow put the logged clinrisk
# package (code_paths) on sys.path.
MODEL_SCRIPT = """\
import mlflow.models

from clinrisk.mlflow_model import ClinriskPyfunc

mlflow.models.set_model(ClinriskPyfunc())
"""


class ClinriskPyfunc(PythonModel):
    """pyfunc wrapper around the serving engine (see the module doc)."""

    def load_context(self, context: Any) -> None:
        from clinrisk.bundle import load_bundle
        from clinrisk.serving.inference import ServingEngine

        bundle = load_bundle(context.artifacts[BUNDLE_ARTIFACT_KEY])
        self.engine = ServingEngine(bundle, serving_config(bundle.config))
        # The same start-up check as the KServe predictor: a bundle that fails it is not served.
        self.self_check = self.engine.self_check()

    # No type hints on purpose: MLflow would derive (and enforce) a schema from them, and an instance's
    # optional fields and variable-length history are the serving engine's to validate, not MLflow's.
    # (MLflow says so in a UserWarning when this class is defined; the only hints that would silence it,
    # DataFrame or ndarray, misstate the input.)
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        from clinrisk.serving.request import ServingError

        try:
            body = v1_body(model_input, params)
            result = self.engine.score(body)
        except ServingError as exc:
            # 400 from `mlflow models serve`, with the same message KServe gives (it never echoes values).
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from None
        return result.response["predictions"]


def serving_config(training_config: dict[str, Any] | None) -> Any:
    """The bundle's serving settings (the config it was trained with), never writing a request log."""
    from clinrisk.config import ServingConfig

    section = dict((training_config or {}).get("serving") or {})
    section["request_log_dir"] = None
    return ServingConfig.model_validate(section)


def v1_body(model_input: Any, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """A KServe V1 body from any input form :meth:`ClinriskPyfunc.predict` accepts."""
    import pandas as pd

    from clinrisk.serving.request import InvalidRequest

    if isinstance(model_input, dict) and "instances" in model_input:
        body = {k: plain(v) for k, v in model_input.items()}
    elif isinstance(model_input, pd.DataFrame):
        body = {"instances": [_present(r) for r in model_input.to_dict(orient="records")]}
    elif isinstance(model_input, list | tuple):
        body = {"instances": [plain(x) for x in model_input]}
    else:
        raise InvalidRequest(
            "input: expected a list of instances, a V1 body {'instances': [...]} or a DataFrame with one "
            f"row per instance, got {type(model_input).__name__}",
            reason="invalid_body",
        )
    given = dict(body.get("parameters") or {})
    if params and params.get(PARAM_TOP_K) is not None and PARAM_TOP_K not in given:
        body["parameters"] = {**given, PARAM_TOP_K: int(params[PARAM_TOP_K])}
    return body


def plain(value: Any) -> Any:
    """JSON-like Python values from what MLflow's parser hands over (numpy arrays and scalars included)."""
    import numpy as np

    if isinstance(value, np.ndarray | np.generic):
        return plain(value.tolist())
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def _present(record: dict[str, Any]) -> dict[str, Any]:
    """A DataFrame row as an instance: NaN/None cells are fields the caller did not send."""
    out = {}
    for k, v in record.items():
        v = plain(v)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        out[str(k)] = v
    return out


def signature() -> Any:
    """No input schema (the serving engine validates instances: optional fields, variable-length history;
    MLflow's schema enforcement would turn a list of instances into a DataFrame) and one parameter, the
    V1 body's ``parameters.reason_codes_top_k``."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec

    return ModelSignature(inputs=None, params=ParamSchema([ParamSpec(PARAM_TOP_K, "long", None)]))


def input_example(bundle: Any) -> list[dict[str, Any]]:
    """One instance of the bundle's use case: its bundled serving example if it has one, else the use
    case's built-in example (what the serving engine's self-check scores)."""
    from clinrisk.io import read_json
    from clinrisk.serving.inference import EXAMPLE_INSTANCE, SERVING_EXAMPLES_FILE
    from clinrisk.usecases import DEFAULT_USECASE, get

    examples = Path(bundle.path) / SERVING_EXAMPLES_FILE
    if examples.is_file():
        instances = read_json(examples).get("instances") or []
        if instances:
            return [dict(instances[0])]
    usecase = str(bundle.spec.get("usecase") or DEFAULT_USECASE)
    if usecase != DEFAULT_USECASE:
        return [dict(get(usecase).serving.example_instance())]
    return [dict(EXAMPLE_INSTANCE)]


def pip_requirements() -> list[str]:
    """``SERVING_REQUIREMENTS`` pinned to the installed versions (each must be installed)."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for dist in SERVING_REQUIREMENTS:
        try:
            out.append(f"{dist}=={version(dist)}")
        except PackageNotFoundError:
            out.append(dist)
    return out


def code_path() -> str:
    """The clinrisk package directory: logged as the model's code (``code_paths``)."""
    import clinrisk

    return str(Path(clinrisk.__file__).resolve().parent)
