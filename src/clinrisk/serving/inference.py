"""Scoring engine behind the predictor (no KServe imports): validate -> raw patient-years -> features ->
bundle probabilities, threshold, out-of-distribution flags and TreeSHAP reasons.

Features: by default (``serving.feature_engine=rowwise``) :class:`clinrisk.features_rowwise.RowwiseFeatureBuilder`
evaluates the feature function's definitions patient by patient, bitwise equal to
``clinrisk.features.build_feature_frame`` (tests over generated populations; re-checked against the polars
path on the built-in and bundled examples at start-up, where any difference keeps the server not ready).
``feature_engine=polars`` runs ``build_feature_frame`` itself: each worker thread builds the lazy plan once
over a deferred source (``pl.defer``) and re-executes it per request (~50 ms of CPU per call, mostly
query planning and per-expression overhead, whatever the number of patients).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import polars as pl

from clinrisk.errors import DataError
from clinrisk.generator.schema import OBSERVED_SCHEMA
from clinrisk.serving.request import (
    OutOfDistribution,
    ServingError,
    ValidatedRequest,
    merge_columns,
    merge_requests,
    validate_request,
)
from clinrisk.usecases import DEFAULT_USECASE

if TYPE_CHECKING:
    from clinrisk.bundle import ModelBundle
    from clinrisk.config import ServingConfig
    from clinrisk.features import FeatureSpec
    from clinrisk.features_rowwise import RowwiseFeatureBuilder
    from clinrisk.usecases.base import ServingBatch, ServingContract

# Optional file a bundle may carry: {"instances": [...], "probabilities": [...]} checked at start-up.
SERVING_EXAMPLES_FILE = "serving_examples.json"
SELF_CHECK_TOL = 1e-9

# A plausible built-in patient (mixed units on purpose) that every bundle must score at start-up.
EXAMPLE_INSTANCE: dict[str, Any] = {
    "sex": "F",
    "birth_year": 1961,
    "region": "S",
    "site_id": 12,
    "ethnicity": "Hispanic",
    "entry_year": 2004,
    "family_history": True,
    "history": [
        {
            "year": year,
            "insurance": "commercial",
            "visits": 3,
            "height_value": 162.0,
            "height_unit": "cm",
            "weight_value": 181.0 + 2 * k,
            "weight_unit": "lb",
            "sbp_mmhg": 131.0,
            "hba1c_value": 5.8 + 0.1 * k if k % 2 == 0 else None,
            "hba1c_unit": "%" if k % 2 == 0 else None,
            "glucose_value": 5.9 + 0.1 * k,
            "glucose_unit": "mmol/L",
            "ldl_value": 128.0,
            "ldl_unit": "mg/dL",
            "hdl_value": 44.0,
            "hdl_unit": "mg/dL",
            "tc_value": 205.0,
            "tc_unit": "mg/dL",
            "tg_value": 160.0,
            "tg_unit": "mg/dL",
            "creatinine_value": 71.0,
            "creatinine_unit": "umol/L",
            **{c: False for c in OBSERVED_SCHEMA if c.startswith(("rx_", "dx_"))},
            "dx_I10": k >= 2,
            "other_dx_code": "M54.5",
        }
        for k, year in enumerate(range(2012, 2016))
    ],
}


@dataclass(frozen=True)
class PluginRequest(ValidatedRequest):
    """A request of a bundle from another use case, parsed by that use case's ServingContract
    (``clinrisk.usecases``); ``batch`` holds its raw tables and keys."""

    batch: ServingBatch | None = None


@dataclass(frozen=True)
class ScoreResult:
    """One scored request: the V1 response body plus what metrics and the request log need."""

    response: dict[str, Any]
    probabilities: list[float]
    ood_features: list[list[str]]


@dataclass(frozen=True)
class OODReference:
    """Columns checked for out-of-distribution values and their training statistics (float64 arrays)."""

    index: np.ndarray
    names: list[str]
    mean: np.ndarray
    std: np.ndarray
    lo: np.ndarray
    hi: np.ndarray


@dataclass(frozen=True)
class CurrentRows:
    """Each instance's current-year features: the model matrix and the values behind it (from the polars
    frame or the row-wise builder's rows)."""

    matrix: np.ndarray
    frame: pl.DataFrame | None = None
    rows: list[dict[str, Any]] | None = None
    spec: FeatureSpec | None = None

    def value(self, i: int, name: str) -> Any:
        """Feature ``name`` of row ``i`` as the feature frame holds it (Float32-rounded float, int, level)."""
        if self.frame is not None:
            return self.frame[name][i]
        assert self.rows is not None and self.spec is not None
        v = self.rows[i][name]
        if v is not None and self.spec.dtypes[name] == "Float32":
            return float(np.float32(v))
        return v

    def to_frame(self, start: int, n: int) -> pl.DataFrame:
        """Rows ``start:start+n`` as a feature frame (the request log's input)."""
        if self.frame is not None:
            return self.frame.slice(start, n)
        assert self.rows is not None and self.spec is not None
        part = self.rows[start : start + n]
        names = self.spec.feature_names
        return pl.DataFrame(
            {c: [r[c] for r in part] for c in names if c in part[0]} if part else {},
            schema={c: self.spec.polars_dtype(c) for c in names if not part or c in part[0]},
            strict=False,
        )


def calendar_trend_patterns(bundle: ModelBundle) -> list[str]:
    """The bundle's ``monitoring.calendar_trend_features`` (the config it was trained with), else the default."""
    from clinrisk.config import MonitoringConfig

    monitoring = (bundle.config or {}).get("monitoring") or {}
    patterns = monitoring.get("calendar_trend_features")
    return list(patterns) if patterns else list(MonitoringConfig().calendar_trend_features)


def ood_reference(bundle: ModelBundle, spec: FeatureSpec) -> OODReference:
    """Numeric, non-indicator features with reference stats (0/1 indicators and categoricals are not
    checked: a rare flag set to 1 is not an anomaly, whatever its z-score). Calendar-trend features (age,
    history_years, years-since: ``monitoring.calendar_trend_features``) are not checked either: a later
    year leaves their training range by construction, which says nothing about the patient."""
    from clinrisk.drift import is_calendar_trend

    trend = calendar_trend_patterns(bundle)
    feats = (bundle.reference or {}).get("features", {})
    idx, names, mean, std, lo, hi = [], [], [], [], [], []
    for j, name in enumerate(bundle.feature_names):
        ref = feats.get(name)
        if not ref or ref.get("type") != "numeric" or spec.dtypes.get(name) in ("Enum", "Int8"):
            continue
        if is_calendar_trend(name, trend):
            continue
        if ref.get("min") is None or ref.get("max") is None:
            continue

        def num(v: Any) -> float:
            return math.nan if v is None else float(v)

        idx.append(j)
        names.append(name)
        mean.append(num(ref.get("mean")))
        std.append(num(ref.get("std")))
        lo.append(num(ref["min"]))
        hi.append(num(ref["max"]))
    return OODReference(
        np.asarray(idx, dtype=np.int64), names, *(np.asarray(a, np.float64) for a in (mean, std, lo, hi))
    )


def ood_flags(X: np.ndarray, ref: OODReference, z: float) -> list[list[str]]:
    """Per row: names of features outside the observed training range or beyond ``z`` SDs (NaN = missing,
    never flagged)."""
    if ref.index.size == 0:
        return [[] for _ in range(X.shape[0])]
    V = X[:, ref.index].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        zz = np.abs(V - ref.mean) / ref.std
    out_range = (ref.lo > V) | (ref.hi < V)
    far = np.where((ref.std > 0) & np.isfinite(zz), zz > z, False)
    bad = np.isfinite(V) & (out_range | far)
    return [[ref.names[j] for j in np.flatnonzero(row)] for row in bad]


class SingleThreadBooster:
    """A LightGBM booster whose ``predict`` defaults to ``num_threads=1``.

    Requests hold a handful of rows: OpenMP's thread team costs far more than it saves there (on the
    2-core machine, ~8 ms of CPU per call with the default team vs ~0.1 ms on one thread), and a
    serving worker should not take every core of its node. Everything else is the booster itself."""

    def __init__(self, booster: Any) -> None:
        self._booster = booster

    def predict(self, data: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("num_threads", 1)
        return self._booster.predict(data, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._booster, name)


class ServingEngine:
    """Thread-safe scorer for one loaded bundle (see module doc)."""

    def __init__(self, bundle: ModelBundle, cfg: ServingConfig) -> None:
        import dataclasses

        from clinrisk.features import FeatureSpec

        # The bundle's own predict path, on a booster pinned to one OpenMP thread (see SingleThreadBooster).
        self.bundle = dataclasses.replace(bundle, booster=cast(Any, SingleThreadBooster(bundle.booster)))
        self.cfg = cfg
        self.spec = FeatureSpec.model_validate(bundle.spec)
        # Plugin hook: a bundle of another use case is served through that use case's request contract;
        # None = the built-in clinical contract of this module.
        self.contract: ServingContract | None = None
        if self.spec.usecase != DEFAULT_USECASE:
            from clinrisk.usecases import get

            self.contract = get(self.spec.usecase).serving
        self.version = bundle.version
        self.threshold = bundle.threshold
        self.ood = ood_reference(bundle, self.spec)
        self._local = threading.local()
        self.rowwise: RowwiseFeatureBuilder | None = None
        if cfg.feature_engine == "rowwise" and self.contract is None:
            from clinrisk.features_rowwise import RowwiseFeatureBuilder

            self.rowwise = RowwiseFeatureBuilder(self.spec, list(bundle.feature_names))
        # bundle.to_matrix re-reads df.schema per feature (O(p^2) in polars); the encoder expressions are
        # the bundle's own, built once here from the spec dtypes (the feature rows always have them).
        from clinrisk.bundle import encode_column

        cats = bundle.categories
        self._encode = [
            encode_column(n, self.spec.polars_dtype(n), cats.get(n)) for n in bundle.feature_names
        ]
        self.request_logger: Any = None
        if cfg.request_log_dir:
            from clinrisk.request_log import RequestLogger

            self.request_logger = RequestLogger(
                cfg.request_log_dir, flush_rows=1000, feature_names=bundle.feature_names
            )

    @classmethod
    def from_dir(cls, path: str | Path, cfg: ServingConfig) -> ServingEngine:
        """Load the bundle at ``path`` (a DataError names what is wrong)."""
        from clinrisk.bundle import load_bundle

        return cls(load_bundle(path), cfg)

    # -------------------------------------------------------------------------------------- features

    def _plan(self) -> tuple[pl.LazyFrame, dict[str, pl.DataFrame]]:
        plan = getattr(self._local, "plan", None)
        if plan is None:
            from clinrisk.features import build_feature_frame

            slot: dict[str, pl.DataFrame] = {}
            source = pl.defer(lambda: slot["raw"], schema=pl.Schema(OBSERVED_SCHEMA))
            # Only the model's features (a selected model may use fewer than the spec builds; projection
            # pushdown then drops the rest from the plan).
            lf = build_feature_frame(source, self.spec).select(
                "patient_id", "year", *self.bundle.feature_names
            )
            plan = (lf, slot)
            self._local.plan = plan
        return plan

    def warm_up(self) -> None:
        """Build this thread's feature plan and score the built-in example once (first-request cost)."""
        if self.contract is not None:
            self.score_many(
                [self.validate({"instances": [dict(self.contract.example_instance())]})], internal=True
            )
            return
        self.score_many(
            [
                validate_request(
                    {"instances": [EXAMPLE_INSTANCE]}, window_years=self.spec.window_years, max_instances=1
                )
            ],
            internal=True,
        )

    def build_features(self, raw: pl.DataFrame) -> pl.DataFrame:
        """Feature rows (one per raw row, sorted by patient_id, year) via the cached per-thread plan."""
        lf, slot = self._plan()
        slot["raw"] = raw
        try:
            return lf.collect()
        finally:
            slot.pop("raw", None)

    def current_rows(self, req: ValidatedRequest) -> pl.DataFrame:
        """Each instance's current-year feature row via the feature function (the polars path)."""
        return self.current_rows_many([req])

    def current_rows_many(self, reqs: list[ValidatedRequest]) -> pl.DataFrame:
        """Current-year feature rows of several requests from ONE polars feature build (instances in request
        order). Patient ids are offset per request so that no two instances share one; each patient's
        features depend on its own rows only, so batching never changes a value."""
        feats = self.build_features(merge_requests(reqs))
        pid = feats["patient_id"].to_numpy()
        last = np.flatnonzero(np.r_[pid[1:] != pid[:-1], True])
        rows = feats[last]
        want = [y for r in reqs for y in r.current_years]
        if rows.height != len(want) or rows["year"].to_list() != want:
            raise DataError("serving: feature rows do not line up with the requests' current years")
        return rows

    def current_features(self, reqs: list[ValidatedRequest], engine: str | None = None) -> CurrentRows:
        """Current-year features and model matrix of several requests with the configured feature engine
        (``engine`` overrides it: the start-up check runs both)."""
        if self.contract is not None:
            contract = self.contract
            frames = [
                contract.features(r.batch, self.spec)
                for r in reqs
                if isinstance(r, PluginRequest) and r.batch
            ]
            frame = pl.concat(frames) if frames else pl.DataFrame()
            if frame.height != sum(r.n_instances for r in reqs):
                raise DataError("serving: feature rows do not line up with the requests' instances")
            return CurrentRows(self.matrix(frame), frame=frame)
        if (engine or self.cfg.feature_engine) == "rowwise":
            from clinrisk.features_rowwise import RowwiseFeatureBuilder

            builder = self.rowwise or RowwiseFeatureBuilder(self.spec, list(self.bundle.feature_names))
            rows = builder.rows(merge_columns(reqs), last_only=True)
            if len(rows) != sum(r.n_instances for r in reqs):
                raise DataError("serving: feature rows do not line up with the requests' instances")
            X = builder.matrix(rows, self.bundle.feature_names, self.bundle.categories)
            return CurrentRows(X, rows=rows, spec=self.spec)
        frame = self.current_rows_many(reqs)
        return CurrentRows(self.matrix(frame), frame=frame)

    def matrix(self, rows: pl.DataFrame) -> np.ndarray:
        """Model input matrix, exactly as ``bundle.to_matrix`` encodes it (cached expressions)."""
        return np.ascontiguousarray(rows.select(self._encode).to_numpy(), dtype=np.float32)

    # --------------------------------------------------------------------------------------- scoring

    def validate(self, payload: Any) -> ValidatedRequest:
        """Validate a decoded V1 body against this bundle's window and the serving limits."""
        if self.contract is not None:
            batch = self.contract.parse(payload, self.spec, self.cfg)
            top_k = (
                payload.get("parameters", {}).get("reason_codes_top_k") if isinstance(payload, dict) else None
            )
            return PluginRequest(
                columns={},
                n_instances=batch.n_instances,
                current_years=[int(k[1]) for k in batch.keys],
                reason_codes_top_k=int(top_k) if isinstance(top_k, int) else self.cfg.reason_codes_top_k,
                batch=batch,
            )
        return validate_request(
            payload,
            window_years=self.spec.window_years,
            max_instances=self.cfg.max_instances,
            default_top_k=self.cfg.reason_codes_top_k,
            max_history_years=self.cfg.max_history_years,
        )

    def score(self, payload: Any) -> ScoreResult:
        """Validate a decoded V1 body and score it (raises ServingError on bad input)."""
        return self.score_validated(self.validate(payload))

    def score_validated(self, req: ValidatedRequest, *, internal: bool = False) -> ScoreResult:
        """Features -> probability, label, OOD flags and (top-k) reasons for a validated request.

        ``internal`` (the start-up self-check) neither rejects out-of-distribution rows nor logs."""
        result = self.score_many([req], internal=internal)[0]
        if isinstance(result, ServingError):
            raise result
        return result

    def score_many(
        self, reqs: list[ValidatedRequest], *, internal: bool = False
    ) -> list[ScoreResult | ServingError]:
        """Score several validated requests with ONE feature build and ONE model call.

        Per-request outcomes stay separate: a request rejected as out of distribution gets its own
        :class:`OutOfDistribution` in its slot and never affects the others. Feature building costs about
        the same for 1 or 100 patients (planning the ~1000-expression query dominates), so coalescing
        concurrent requests is what buys throughput (see :class:`clinrisk.serving.batching.MicroBatcher`).
        """
        cur = self.current_features(reqs)
        X = cur.matrix
        probs = self.bundle.predict_proba(X)
        flags = ood_flags(X, self.ood, self.cfg.ood_z)
        tau = self.threshold
        out: list[ScoreResult | ServingError] = []
        start = 0
        for req in reqs:
            stop = start + req.n_instances
            p, f = probs[start:stop], flags[start:stop]
            bad = [i for i, fi in enumerate(f) if fi]
            if self.cfg.reject_out_of_distribution and not internal and bad:
                i = bad[0]
                out.append(
                    OutOfDistribution(
                        f"anomaly detected: instances[{i}] is outside the training distribution "
                        f"(features {', '.join(f[i][:10])}); {len(bad)} instance(s) flagged",
                        reason="out_of_distribution",
                    )
                )
                start = stop
                continue
            reasons = self._reasons(cur, start, stop, req.reason_codes_top_k)
            preds = [
                {
                    "probability": float(pi),
                    "label": int(pi >= tau),
                    "threshold": tau,
                    "out_of_distribution": bool(f[i]),
                    "ood_features": f[i],
                    "reasons": reasons[i],
                }
                for i, pi in enumerate(p)
            ]
            if self.request_logger is not None and not internal:
                self.request_logger.log(cur.to_frame(start, req.n_instances), p, self.version)
            out.append(
                ScoreResult(
                    response={"predictions": preds, "model_version": self.version},
                    probabilities=[float(pi) for pi in p],
                    ood_features=f,
                )
            )
            start = stop
        return out

    def _reasons(self, cur: CurrentRows, start: int, stop: int, k: int) -> list[list[dict[str, Any]]]:
        """Top-k TreeSHAP contributions (raw-margin scale) for rows ``start:stop``, largest |contribution|
        first (TreeSHAP runs only on those rows, and only when asked for)."""
        if k <= 0:
            return [[] for _ in range(stop - start)]
        contrib = self.bundle.predict_contrib(cur.matrix[start:stop])[:, :-1]
        names = self.bundle.feature_names
        out = []
        for i in range(stop - start):
            order = np.argsort(-np.abs(contrib[i]), kind="stable")[:k]
            out.append(
                [
                    {
                        "feature": names[j],
                        "contribution": float(contrib[i, j]),
                        "value": _plain(cur.value(start + i, names[j])),
                    }
                    for j in order
                ]
            )
        return out

    # ----------------------------------------------------------------------------------- self-check

    def self_check(self) -> dict[str, Any]:
        """Score the built-in example (and the bundle's serving_examples.json if present) end to end.

        Fails (DataError) unless every probability is finite, in (0, 1), deterministic, equal to the batch
        path (``predict_proba`` on the DataFrame) and, for bundled examples, equal to the stored value; with
        the row-wise feature engine, its matrix must also equal the feature function's bit for bit.
        """
        from clinrisk.io import read_json

        if self.contract is not None:
            return self._plugin_self_check()
        req = validate_request(
            {"instances": [EXAMPLE_INSTANCE]}, window_years=self.spec.window_years, max_instances=1
        )
        rows = self.current_rows(req)
        p_matrix = self.bundle.predict_proba(self.matrix(rows))
        p_frame = self.bundle.predict_proba(rows)
        p_again = self.bundle.predict_proba(self.matrix(self.current_rows(req)))
        if not (np.all(np.isfinite(p_matrix)) and np.all((p_matrix > 0) & (p_matrix < 1))):
            raise DataError(f"bundle {self.bundle.path}: self-check probability {p_matrix} not in (0, 1)")
        if not (np.array_equal(p_matrix, p_frame) and np.array_equal(p_matrix, p_again)):
            raise DataError(f"bundle {self.bundle.path}: self-check is not deterministic across paths")
        self._check_engines(req, "the built-in example")
        checked = 1
        examples_file = Path(self.bundle.path) / SERVING_EXAMPLES_FILE
        if examples_file.is_file():
            ex = read_json(examples_file)
            want = np.asarray(ex.get("probabilities", []), dtype=np.float64)
            try:
                ex_req = validate_request(
                    {"instances": ex.get("instances", [])},
                    window_years=self.spec.window_years,
                    max_instances=max(1, len(ex.get("instances", []))),
                    max_history_years=self.cfg.max_history_years,
                )
            except ServingError as exc:
                raise DataError(f"bundle file {SERVING_EXAMPLES_FILE}: invalid example ({exc})") from None
            self._check_engines(ex_req, SERVING_EXAMPLES_FILE)
            got = np.asarray(self.score_validated(ex_req, internal=True).probabilities)
            if want.shape != got.shape or not np.allclose(got, want, rtol=0, atol=SELF_CHECK_TOL):
                raise DataError(
                    f"bundle {self.bundle.path}: {SERVING_EXAMPLES_FILE} probabilities differ from served ones"
                )
            checked += int(want.size)
        return {"examples_checked": checked, "example_probability": float(p_matrix[0])}

    def _plugin_self_check(self) -> dict[str, Any]:
        """The use case's example instance scores to a finite probability in (0, 1), the same on both paths."""
        assert self.contract is not None
        req = self.validate({"instances": [dict(self.contract.example_instance())]})
        rows = self.current_features([req]).frame
        assert rows is not None
        p_matrix = self.bundle.predict_proba(self.matrix(rows))
        p_frame = self.bundle.predict_proba(rows)
        if not (np.all(np.isfinite(p_matrix)) and np.all((p_matrix > 0) & (p_matrix < 1))):
            raise DataError(f"bundle {self.bundle.path}: self-check probability {p_matrix} not in (0, 1)")
        if not np.array_equal(p_matrix, p_frame):
            raise DataError(f"bundle {self.bundle.path}: self-check is not deterministic across paths")
        return {
            "examples_checked": 1,
            "example_probability": float(p_matrix[0]),
            "usecase": self.spec.usecase,
        }

    def _check_engines(self, req: ValidatedRequest, what: str) -> None:
        """The row-wise engine (when configured) must give the feature function's matrix bit for bit."""
        if self.rowwise is None:
            return
        want = self.current_features([req], engine="polars").matrix
        got = self.current_features([req], engine="rowwise").matrix
        if want.shape != got.shape or not np.array_equal(want, got, equal_nan=True):
            differ = np.flatnonzero(~((want == got) | (np.isnan(want) & np.isnan(got))).all(axis=0))
            names = [self.bundle.feature_names[j] for j in differ[:10]]
            raise DataError(
                f"bundle {self.bundle.path}: the row-wise feature engine differs from the feature function "
                f"on {what} (features {names}); set serving.feature_engine=polars"
            )

    def close(self) -> None:
        """Flush the request log (if any)."""
        if self.request_logger is not None:
            self.request_logger.close()


def _plain(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v
