"""Plan, per-shard generation and finalisation of the raw dataset (observed + truth + manifest)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from clinrisk.config import ClinriskConfig, config_hash, save_config
from clinrisk.errors import DataError
from clinrisk.generator.calibrate import calibrate_alpha
from clinrisk.generator.render import render_chunk
from clinrisk.generator.schema import OBSERVED_SCHEMA, TRUTH_SCHEMA
from clinrisk.generator.simulate import simulate_chunk
from clinrisk.io import shard_file, write_json

GENERATOR_VERSION = "1.0.0"
OBSERVED_DIR, TRUTH_DIR = "observed", "truth"
MANIFEST, CONFIG_FILE = "manifest.json", "config.yaml"


def plan_generation(cfg: ClinriskConfig) -> dict[str, Any]:
    """JSON-able plan: α (bisection unless fixed), blocks and their shard assignment."""
    g = cfg.generate
    n_blocks = -(-g.n_patients // g.block_size)
    n_shards = min(g.n_shards, n_blocks)  # never an empty shard
    bounds = [s * n_blocks // n_shards for s in range(n_shards + 1)]
    if g.alpha is not None:
        calib: dict[str, Any] = {"alpha": g.alpha, "pilot_mean_risk": None, "method": "fixed"}
    else:
        calib = {**calibrate_alpha(g, cfg.run.seed), "method": "bisection"}
    return {
        "generator_version": GENERATOR_VERSION,
        "seed": cfg.run.seed,
        "alpha": calib["alpha"],
        "calibration": {
            **calib,
            "target": g.target_prevalence,
            "horizon": g.calibration_horizon,
            "pilot_patients": g.calibration_patients if g.alpha is None else 0,
        },
        "n_patients": g.n_patients,
        "block_size": g.block_size,
        "n_blocks": n_blocks,
        "n_shards": n_shards,
        "shard_blocks": [[bounds[s], bounds[s + 1]] for s in range(n_shards)],
        "config_hash": config_hash(cfg, ("run", "generate")),
    }


def _write_parquet(df: pl.DataFrame, path: Path) -> None:
    """Write one shard file atomically (temp file + rename) so a killed worker leaves no partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    df.write_parquet(tmp, compression="zstd", statistics=True, row_group_size=256_000)
    os.replace(tmp, path)


def simulate_shard(
    cfg: ClinriskConfig, plan: dict[str, Any], shard: int
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Simulate the blocks of ``shard`` chunk by chunk (pure): its observed and truth tables."""
    g = cfg.generate
    if not 0 <= shard < plan["n_shards"]:
        raise DataError(f"shard {shard}: plan has shards 0..{plan['n_shards'] - 1}")
    b0, b1 = plan["shard_blocks"][shard]
    per_chunk = max(1, g.chunk_patients // g.block_size)
    obs_parts, truth_parts = [], []
    for start in range(b0, b1, per_chunk):
        blocks = list(range(start, min(start + per_chunk, b1)))
        res = simulate_chunk(g, plan["seed"], blocks, plan["alpha"])
        obs, truth = render_chunk(g, res)
        del res
        obs_parts.append(obs)
        truth_parts.append(truth)
    observed = pl.concat(obs_parts, rechunk=True) if obs_parts else pl.DataFrame(schema=OBSERVED_SCHEMA)
    truth_df = pl.concat(truth_parts, rechunk=True) if truth_parts else pl.DataFrame(schema=TRUTH_SCHEMA)
    return observed, truth_df


def generate_shard(cfg: ClinriskConfig, plan: dict[str, Any], shard: int, out_dir: Path) -> dict[str, Any]:
    """Simulate shard ``shard`` and write its observed and truth Parquet files."""
    observed, truth_df = simulate_shard(cfg, plan, shard)
    out_dir = Path(out_dir)
    _write_parquet(observed, shard_file(out_dir / OBSERVED_DIR, shard))
    _write_parquet(truth_df, shard_file(out_dir / TRUTH_DIR, shard))
    return {
        "shard": shard,
        "rows": observed.height,
        "truth_rows": truth_df.height,
        "patients": observed["patient_id"].n_unique(),
    }


class _ColumnHasher:
    """sha256 streams per column (null mask, string lengths, values) over rows in (patient_id, year)
    order. Shard boundaries do not matter: each stream is the concatenation over shards in order."""

    def __init__(self, schema: dict[str, pl.DataType]) -> None:
        self.schema = schema
        self.h = {c: [hashlib.sha256() for _ in range(3)] for c in schema}

    def update(self, df: pl.DataFrame) -> None:
        for c, dtype in self.schema.items():
            s = df[c]
            h_null, h_len, h_val = self.h[c]
            h_null.update(s.is_null().to_numpy().tobytes())
            if dtype == pl.Categorical or dtype == pl.String:
                st = s.cast(pl.String)
                h_len.update(st.str.len_bytes().fill_null(0).to_numpy().astype("<u8").tobytes())
                joined = st.str.join("", ignore_nulls=True).item() or ""
                h_val.update(joined.encode())
            else:
                phys = s.to_physical() if isinstance(dtype, pl.Enum) else s
                arr = phys.fill_null(0).to_numpy()
                h_val.update(np.ascontiguousarray(arr).tobytes())

    def hexdigest(self) -> str:
        top = hashlib.sha256()
        for c, dtype in self.schema.items():
            parts = ":".join(h.hexdigest() for h in self.h[c])
            top.update(f"{c}:{dtype}:{parts}\n".encode())
        return top.hexdigest()


def label_row_counts(
    observed: pl.DataFrame, truth: pl.DataFrame, horizon: int, first_row_year: int, last_year: int
) -> dict[str, int]:
    """Eligible prediction rows and positives under docs/science.md §3.1 (recorded label from dx_E11 only).

    Rows: t ≥ first_row_year and t < T_rec (first year with dx_E11); a positive has T_rec ≤ t + H; a
    negative needs full follow-up, t + H ≤ min(E, last enrolled year). The true label is T* ≤ t + H.
    """
    onset = truth.group_by("patient_id").agg(pl.col("onset_year").first())
    per = observed.group_by("patient_id").agg(
        pl.col("year").max().alias("last_enrolled"),
        pl.col("year").filter(pl.col("dx_E11")).min().alias("t_rec"),
    )
    rows = (
        observed.select("patient_id", "year")
        .join(per, on="patient_id")
        .join(onset, on="patient_id", how="left")
        .with_columns(pl.col("year").cast(pl.Int32))
        .filter(pl.col("year") >= first_row_year)
        .filter(pl.col("t_rec").is_null() | (pl.col("year") < pl.col("t_rec")))
        .with_columns(
            (pl.col("t_rec").is_not_null() & (pl.col("t_rec") <= pl.col("year") + horizon)).alias("y_rec"),
            (pl.col("onset_year").is_not_null() & (pl.col("onset_year") <= pl.col("year") + horizon)).alias(
                "y_true"
            ),
        )
        .filter(
            pl.col("y_rec")
            | (pl.col("year") + horizon <= pl.min_horizontal(pl.col("last_enrolled"), pl.lit(last_year)))
        )
    )
    return {
        "rows": rows.height,
        "recorded_positive": int(rows["y_rec"].sum()),
        "true_positive": int(rows["y_true"].sum()),
    }


def read_shard_files(out_dir: Path, shard: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The observed and truth tables of one written shard (a missing file names the shard)."""
    paths = [shard_file(Path(out_dir) / d, shard) for d in (OBSERVED_DIR, TRUTH_DIR)]
    for p in paths:
        if not p.is_file():
            raise DataError(f"{p}: shard file missing (generate_shard {shard} did not finish)")
    return pl.read_parquet(paths[0]), pl.read_parquet(paths[1])


def finalize_generation(cfg: ClinriskConfig, plan: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """Build the manifest from the written shards; write manifest.json and config.yaml."""
    out_dir = Path(out_dir)
    manifest = build_manifest(cfg, plan, lambda shard: read_shard_files(out_dir, shard))
    save_config(cfg, out_dir / CONFIG_FILE)
    write_json(out_dir / MANIFEST, manifest)
    return manifest


def build_manifest(
    cfg: ClinriskConfig,
    plan: dict[str, Any],
    read_shard: Callable[[int], tuple[pl.DataFrame, pl.DataFrame]],
) -> dict[str, Any]:
    """Hash both tables shard by shard (read through ``read_shard``), compute prevalence and summary
    statistics (pure: no paths)."""
    g = cfg.generate
    obs_hash, truth_hash = _ColumnHasher(OBSERVED_SCHEMA), _ColumnHasher(TRUTH_SCHEMA)
    horizon = g.calibration_horizon
    first_row = g.first_year + g.burn_in_years
    rows_per_shard: list[int] = []
    truth_rows = patients = 0
    counts = {"rows": 0, "recorded_positive": 0, "true_positive": 0}
    a1c_missing = 0
    prediab = {"rows": 0, "onsets": 0}
    last_pid = -1
    for shard in range(plan["n_shards"]):
        obs, truth = read_shard(shard)
        for name, df, schema in (("observed", obs, OBSERVED_SCHEMA), ("truth", truth, TRUTH_SCHEMA)):
            if dict(df.schema) != schema:
                raise DataError(f"{name} shard {shard}: schema differs from {name.upper()}_SCHEMA")
        if obs.height and int(obs["patient_id"][0]) <= last_pid:
            raise DataError(f"observed shard {shard}: patient ids overlap the previous shard")
        if obs.height:
            last_pid = int(obs["patient_id"][-1])
        obs_hash.update(obs)
        truth_hash.update(truth)
        rows_per_shard.append(obs.height)
        truth_rows += truth.height
        patients += obs["patient_id"].n_unique()
        a1c_missing += int(obs["hba1c_value"].is_null().sum())
        c = label_row_counts(obs, truth, horizon, first_row, g.last_year)
        for key in counts:
            counts[key] += c[key]
        # realism check (§1.6): yearly conversion among prediabetic-range latent patient-years
        pre = truth.filter(
            pl.col("enrolled")
            & (pl.col("year") >= first_row)
            & (pl.col("year") < g.last_year)
            & (pl.col("onset_year").is_null() | (pl.col("year") < pl.col("onset_year")))
            & (pl.col("g_latent") >= 5.7)
            & (pl.col("g_latent") < 6.5)
        )
        prediab["rows"] += pre.height
        prediab["onsets"] += int((pre["onset_year"] == pre["year"] + 1).sum())
    n_rows = sum(rows_per_shard)
    manifest = {
        "generator_version": GENERATOR_VERSION,
        "seed": plan["seed"],
        "alpha": plan["alpha"],
        "calibration": plan["calibration"],
        "config_hash": plan["config_hash"],
        "observed_hash": obs_hash.hexdigest(),
        "truth_hash": truth_hash.hexdigest(),
        "n_patients_simulated": plan["n_patients"],
        "patients": patients,
        "rows": n_rows,
        "truth_rows": truth_rows,
        "rows_per_shard": rows_per_shard,
        "n_shards": plan["n_shards"],
        "rows_per_patient": round(n_rows / max(patients, 1), 4),
        "prevalence": {
            "horizon": horizon,
            "first_row_year": first_row,
            "eligible_rows": counts["rows"],
            "recorded": round(counts["recorded_positive"] / max(counts["rows"], 1), 6),
            "true": round(counts["true_positive"] / max(counts["rows"], 1), 6),
        },
        "hba1c_missing_share": round(a1c_missing / max(n_rows, 1), 6),
        "prediabetes_annual_conversion": round(prediab["onsets"] / max(prediab["rows"], 1), 6),
        "delay_mode": g.delay_mode,
        "delay_severity": g.delay_severity,
        # coding drift moves recorded labels, so a reader of the data can tell which generator made them
        "secular_drift": g.secular_drift,
        "secular_coding_per_year": g.secular_coding_per_year if g.secular_drift else 0.0,
    }
    return manifest


def generate_dataset(
    cfg: ClinriskConfig, out_dir: Path, workers: int | None = None, progress: bool = True
) -> dict[str, Any]:
    """Plan, generate every shard and write the manifest, atomically: the framework's generate stage
    (``clinrisk.usecase_io.generate_raw``) with this generator as the clinical use case's data source."""
    from clinrisk.usecase_io import generate_raw

    if cfg.run.usecase != "clinical":
        raise DataError(f"run.usecase={cfg.run.usecase!r}: generate_dataset is the clinical generator")
    return generate_raw(cfg, out_dir, workers, progress)
