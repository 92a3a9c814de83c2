"""Reading the run store: resolving run references and the queries (pandas DataFrames) over runs, metrics
and arrays. Every query takes the store's lock shared and opens the database read-only (see
:mod:`learndyn.store.connection`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from learndyn.store.connection import StoreConnections
from learndyn.store.encoding import loads
from learndyn.store.errors import RunNotFoundError, StoreError
from learndyn.store.schema import RUN_COLUMNS, STATUSES
from learndyn.validation import check_choice, check_int


class RunQueries(StoreConnections):
    """The read side of :class:`~learndyn.store.RunStore`. A run reference is its id, a unique id prefix or
    its name (the latest run of that name)."""

    # ------------------------------------------------------------------ resolving references
    def resolve(self, ref: str) -> str:
        """The id of the run ``ref`` names: an exact id, a name (its latest run) or a unique id prefix."""
        if not isinstance(ref, str) or not ref:
            raise RunNotFoundError(f"run reference {ref!r} is empty")
        with self._read() as con:
            if con.execute("SELECT 1 FROM runs WHERE id = ?", [ref]).fetchone():
                return ref
            row = con.execute(
                "SELECT id FROM runs WHERE name = ? ORDER BY started_at DESC, id LIMIT 1", [ref]
            ).fetchone()
            if row:
                return row[0]
            rows = con.execute(
                "SELECT id FROM runs WHERE starts_with(id, ?) ORDER BY started_at LIMIT 6", [ref.lower()]
            ).fetchall()
        if len(rows) == 1:
            return rows[0][0]
        if not rows:
            raise RunNotFoundError(f"no run with id, id prefix or name {ref!r} in {self.path}")
        shown = ", ".join(r[0][:12] for r in rows[:5])
        raise RunNotFoundError(f"run prefix {ref!r} is ambiguous in {self.path}: matches {shown}, ...")

    def resolve_targets(self, refs: str | Sequence[str]) -> list[str]:
        """Run ids for a list of references, each a run (as in :meth:`resolve`) or a sweep id (or prefix).

        A sweep reference expands to its runs in start order. Duplicates are dropped, order kept.
        """
        if isinstance(refs, str):
            refs = [refs]
        out: list[str] = []
        for ref in refs:
            ids = self._sweep_runs(ref, exact=True)
            if not ids:
                try:
                    ids = [self.resolve(ref)]
                except RunNotFoundError:
                    ids = self._sweep_runs(ref, exact=False)
                    if not ids:
                        raise RunNotFoundError(
                            f"no run or sweep with id, id prefix or name {ref!r} in {self.path}"
                        ) from None
            out.extend(i for i in ids if i not in out)
        return out

    def _sweep_runs(self, ref: str, *, exact: bool) -> list[str]:
        with self._read() as con:
            if exact:
                rows = con.execute(
                    "SELECT id FROM runs WHERE sweep_id = ? ORDER BY started_at, id", [ref]
                ).fetchall()
                return [r[0] for r in rows]
            sweeps = con.execute(
                "SELECT DISTINCT sweep_id FROM runs WHERE starts_with(sweep_id, ?)", [ref]
            ).fetchall()
        if len(sweeps) > 1:
            raise RunNotFoundError(f"sweep prefix {ref!r} is ambiguous in {self.path}")
        return self._sweep_runs(sweeps[0][0], exact=True) if sweeps else []

    # ------------------------------------------------------------------ queries
    def runs(
        self,
        *,
        name: str | None = None,
        status: str | None = None,
        sweep_id: str | None = None,
        experiment: str | None = None,
        limit: int | None = None,
    ) -> pd.DataFrame:
        """All runs (oldest first), optionally filtered; ``config`` and ``summary`` are parsed to dicts.

        With ``limit``, the newest ``limit`` runs (still oldest first).
        """
        where, params = [], []
        for column, value in (
            ("name", name),
            ("status", status),
            ("sweep_id", sweep_id),
            ("experiment", experiment),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if status is not None:
            check_choice("status", status, STATUSES, owner="RunStore.runs")
        sql = f"SELECT {', '.join(RUN_COLUMNS)} FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY started_at DESC, id"
        if limit is not None:
            sql += f" LIMIT {check_int('limit', limit, low=0, owner='RunStore.runs')}"
        with self._read() as con:
            df = con.execute(sql, params).df()
        df = df.iloc[::-1].reset_index(drop=True)
        for column in ("config", "summary"):
            df[column] = [loads(v) for v in df[column]]
        df["seed"] = df["seed"].astype("Int64")
        return df

    def run_info(self, run: str) -> dict[str, Any]:
        """One run's row as a dict (``config`` and ``summary`` parsed)."""
        run_id = self.resolve(run)
        with self._read() as con:
            df = con.execute(f"SELECT {', '.join(RUN_COLUMNS)} FROM runs WHERE id = ?", [run_id]).df()
        info = {k: (None if _isna(v) else v) for k, v in df.iloc[0].to_dict().items()}
        info["config"] = loads(info["config"])
        info["summary"] = loads(info["summary"])
        if info["seed"] is not None:
            info["seed"] = int(info["seed"])
        if info["pid"] is not None:
            info["pid"] = int(info["pid"])
        return info

    def metrics(self, run: str, names: str | Iterable[str] | None = None) -> pd.DataFrame:
        """Scalar metrics of ``run`` as a DataFrame ``[step, name, value]`` sorted by name then step.

        ``names``: metric names to keep; an entry with ``*`` or ``?`` is a glob (``"noise/*"``).
        """
        run_id = self.resolve(run)
        sql = "SELECT step, name, value FROM metrics WHERE run_id = ?"
        params: list[Any] = [run_id]
        if names is not None:
            names = [names] if isinstance(names, str) else list(names)
            if not names:
                return pd.DataFrame(
                    {
                        "step": pd.Series(dtype="int64"),
                        "name": pd.Series(dtype=object),
                        "value": pd.Series(dtype=float),
                    }
                )
            clauses = []
            for n in names:
                clauses.append("name GLOB ?" if ("*" in n or "?" in n) else "name = ?")
                params.append(n)
            sql += " AND (" + " OR ".join(clauses) + ")"
        sql += " ORDER BY name, step"
        with self._read() as con:
            return con.execute(sql, params).df()

    def metric_names(self, run: str) -> list[str]:
        """Names of the scalar metrics ``run`` logged, sorted."""
        run_id = self.resolve(run)
        with self._read() as con:
            rows = con.execute(
                "SELECT DISTINCT name FROM metrics WHERE run_id = ? ORDER BY name", [run_id]
            ).fetchall()
        return [r[0] for r in rows]

    def last_metrics(self, run: str) -> pd.DataFrame:
        """Per metric of ``run``: ``[name, step, value, count]`` at its largest step (the final value)."""
        run_id = self.resolve(run)
        with self._read() as con:
            return con.execute(
                "SELECT name, arg_max(step, step) AS step, arg_max(value, step) AS value, count(*) AS count "
                "FROM metrics WHERE run_id = ? GROUP BY name ORDER BY name",
                [run_id],
            ).df()

    def array_names(self, run: str) -> pd.DataFrame:
        """Array metrics of ``run``: ``[name, count, first_step, last_step, shape]`` (shape of the last)."""
        run_id = self.resolve(run)
        with self._read() as con:
            return con.execute(
                "SELECT name, count(*) AS count, min(step) AS first_step, max(step) AS last_step, "
                "arg_max(shape, step) AS shape FROM arrays WHERE run_id = ? GROUP BY name ORDER BY name",
                [run_id],
            ).df()

    def arrays(self, run: str, name: str) -> pd.DataFrame:
        """The array metric ``name`` of ``run``: a DataFrame ``[step, array]`` (numpy arrays), by step."""
        run_id = self.resolve(run)
        with self._read() as con:
            refs = con.execute(
                "SELECT step, file, key FROM arrays WHERE run_id = ? AND name = ? ORDER BY step, file, key",
                [run_id, name],
            ).fetchall()
        loaded: dict[str, Any] = {}
        steps, values = [], []
        for step, file, key in refs:
            if file not in loaded:
                full = self.arrays_dir / file
                try:
                    with np.load(full, allow_pickle=False) as npz:
                        loaded[file] = {k: npz[k] for k in npz.files}
                except (OSError, ValueError) as exc:
                    raise StoreError(f"run store {self.path}: cannot read array file {full}: {exc}") from None
            steps.append(int(step))
            values.append(loaded[file][key])
        return pd.DataFrame(
            {"step": pd.Series(steps, dtype="int64"), "array": pd.Series(values, dtype=object)}
        )

    def array_stack(self, run: str, name: str) -> tuple[np.ndarray, np.ndarray]:
        """``(steps, stacked)`` for an array metric; ragged 1-d arrays are padded with NaN to the longest."""
        df = self.arrays(run, name)
        steps = df["step"].to_numpy()
        arrays = [np.asarray(a) for a in df["array"]]
        if not arrays:
            return steps, np.empty((0, 0))
        if len({a.shape for a in arrays}) == 1:
            return steps, np.stack(arrays)
        if all(a.ndim == 1 for a in arrays):
            width = max(a.shape[0] for a in arrays)
            out = np.full((len(arrays), width), np.nan)
            for i, a in enumerate(arrays):
                out[i, : a.shape[0]] = a
            return steps, out
        raise StoreError(f"array metric {name!r} has arrays of different shapes; use arrays() instead")

    def sql(self, query: str, params: Sequence[Any] | None = None) -> pd.DataFrame:
        """Run a read-only SQL query against the store's tables (runs, metrics, arrays)."""
        with self._read() as con:
            return con.execute(query, list(params or [])).df()


def _isna(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False
