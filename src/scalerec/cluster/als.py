"""Distributed implicit ALS: user and item shards solved as Ray tasks against shared fixed factors.

The objective is ``implicit``'s (and so :class:`scalerec.models.als.ALS`'s): confidence
``c = alpha * value`` on stored cells (a negative value is a dislike: preference 0, confidence
``|c|``), confidence 1 and preference 0 elsewhere, plain ``λ`` on every factor norm. One iteration
is two half-steps; in each, the factors of one side are fixed, their Gram matrix ``FᵀF`` is
computed once (as the sum of the per-shard Grams the previous half-step returned), and every shard
of the other side is one Ray task that reads the fixed factors from the object store and solves
its rows with a vectorised numpy kernel:

- ``solver="cg"`` (default, as ``implicit``): ``cg_steps`` conjugate-gradient steps warm-started at
  the previous factors, all rows of a cache-sized block at once;
- ``solver="cholesky"``: the exact solve (``implicit``'s ``use_cg=False``), batched per shard.

The kernel is importable and usable without Ray (:func:`solve_cg`, :func:`training_loss`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp

from scalerec.cluster.twin import ClusterTwin, register_twin
from scalerec.errors import ValidationError
from scalerec.models.als import ALS, solve_users
from scalerec.models.base import Progress

#: nonzeros per CG block: the gathered factor rows stay in cache (numpy keeps up with implicit)
CG_BLOCK_NNZ = 8192
#: nonzeros per block of the loss computation
LOSS_BLOCK_NNZ = 1 << 16
SOLVERS = ("cg", "cholesky")
#: as scalerec.cluster.ray_executor.DEFAULT_TASK_RETRIES (not imported: that module needs Ray)
DEFAULT_TASK_RETRIES = 3


@dataclass(frozen=True)
class Shard:
    """Rows ``[start, stop)`` of a confidence matrix with columns renumbered to those it touches.

    ``indptr`` int64 [rows + 1] from 0; ``local`` int32 [nnz] indexes ``cols``; ``data`` float32
    [nnz] confidences; ``cols`` int64 [n_cols] the sorted global columns of its nonzeros. A task
    then gathers only ``len(cols)`` rows of the fixed factors, not all of them.
    """

    start: int
    stop: int
    indptr: np.ndarray
    local: np.ndarray
    data: np.ndarray
    cols: np.ndarray

    @property
    def rows(self) -> int:
        return self.stop - self.start

    @property
    def nnz(self) -> int:
        return int(self.indptr[-1])

    @property
    def nbytes(self) -> int:
        return int(self.indptr.nbytes + self.local.nbytes + self.data.nbytes + self.cols.nbytes)


def make_shards(C: sp.csr_matrix, n_shards: int) -> list[Shard]:
    """Split CSR ``C`` into at most ``n_shards`` contiguous row ranges of about equal work.

    Work is nonzeros plus rows (each row costs a dense f x f product too), so shards balance on
    both power-law and very sparse data. Row ranges are contiguous so factors concatenate back.
    """
    n_rows = C.shape[0]
    n_shards = max(1, min(int(n_shards), n_rows))
    indptr = C.indptr.astype(np.int64)
    cost = indptr + np.arange(n_rows + 1)
    cuts = np.searchsorted(cost, np.linspace(0, cost[-1], n_shards + 1)[1:-1])
    cuts = np.unique(np.r_[0, cuts, n_rows])
    shards = []
    for a, b in zip(cuts[:-1].tolist(), cuts[1:].tolist()):
        lo, hi = indptr[a], indptr[b]
        cols, local = np.unique(C.indices[lo:hi], return_inverse=True)
        shards.append(
            Shard(
                start=a,
                stop=b,
                indptr=indptr[a : b + 1] - lo,
                local=local.astype(np.int32).ravel(),
                data=np.asarray(C.data[lo:hi], dtype=np.float32),
                cols=cols.astype(np.int64),
            )
        )
    return shards


def _rowdot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", a, b)


def solve_cg(
    shard: Shard, x0: np.ndarray, Y: np.ndarray, gram_reg: np.ndarray, cg_steps: int = 3
) -> np.ndarray:
    """``implicit``'s conjugate-gradient update of every row of ``shard``, vectorised over rows.

    ``x0`` float32 [rows, f]: the previous factors (warm start); ``Y`` float32 [len(shard.cols), f]:
    the fixed factors of the shard's columns; ``gram_reg`` float32 [f, f]: ``FᵀF + λI`` over all
    fixed factors. Solves ``(FᵀF + λI + Σ_i (|c_i|-1) y_i y_iᵀ) x = Σ_{c_i>0} c_i y_i`` by
    ``cg_steps`` CG steps, stopping per row once the residual norm² is below 1e-20. Rows without
    nonzeros get zeros. Returns a new float32 [rows, f] array.
    """
    x = np.array(x0, dtype=np.float32, copy=True)
    G = np.asarray(gram_reg, dtype=np.float32)
    Y = np.asarray(Y, dtype=np.float32)
    indptr = shard.indptr
    n = shard.rows
    if n == 0:
        return x
    cuts = np.searchsorted(indptr, np.arange(CG_BLOCK_NNZ, indptr[-1], CG_BLOCK_NNZ))
    cuts = np.unique(np.r_[0, cuts, n])
    for a, b in zip(cuts[:-1].tolist(), cuts[1:].tolist()):
        lo, hi = int(indptr[a]), int(indptr[b])
        ip = indptr[a : b + 1] - lo
        counts = np.diff(ip)
        xb = x[a:b]
        if hi == lo:
            xb[:] = 0.0
            continue
        rows = np.repeat(np.arange(b - a, dtype=np.int32), counts)
        c = shard.data[lo:hi]
        cm1 = np.abs(c) - np.float32(1.0)
        Yg = np.take(Y, shard.local[lo:hi], axis=0)
        # R aggregates per-nonzero weights into per-row sums: R @ Yg = Σ_i w_i y_i for each row,
        # reading the gathered rows contiguously (faster than a sparse product against Y).
        R = sp.csr_matrix(
            (np.empty(hi - lo, dtype=np.float32), np.arange(hi - lo, dtype=np.int32), ip), shape=(b - a, hi - lo)
        )
        d = _rowdot(Yg, np.take(xb, rows, axis=0))
        np.subtract(np.maximum(c, 0), cm1 * d, out=R.data)
        r = R @ Yg - xb @ G
        p = r.copy()
        rs = _rowdot(r, r)
        active = rs >= 1e-20
        for _ in range(int(cg_steps)):
            if not active.any():
                break
            np.multiply(cm1, _rowdot(Yg, np.take(p, rows, axis=0)), out=R.data)
            Ap = p @ G + R @ Yg
            pAp = _rowdot(p, Ap)
            step = np.divide(rs, pAp, out=np.zeros_like(rs), where=active & (pAp != 0))
            xb += step[:, None] * p
            r -= step[:, None] * Ap
            rs_new = _rowdot(r, r)
            beta = np.divide(rs_new, rs, out=np.zeros_like(rs), where=active & (rs > 0))
            p = r + beta[:, None] * p
            active &= rs_new >= 1e-20
            rs = rs_new
        xb[counts == 0] = 0.0
    return x


def solve_exact(shard: Shard, Y: np.ndarray, gram_reg: np.ndarray) -> np.ndarray:
    """The exact least-squares rows of ``shard`` (``implicit``'s Cholesky path); float32 [rows, f]."""
    history = sp.csr_matrix((shard.data, shard.local, shard.indptr), shape=(shard.rows, len(shard.cols)))
    return solve_users(Y, np.asarray(gram_reg, dtype=np.float64), history, 1.0)


def loss_terms(shard: Shard, x: np.ndarray, Y: np.ndarray, gram: np.ndarray) -> tuple[float, float]:
    """Unregularised loss numerator and total confidence of ``shard``'s rows (``implicit``'s terms).

    ``Σ_u x_uᵀ(FᵀF)x_u + Σ_nz [|c| + ((c>0 ? -2c : 0) + (|c|-1) y·x) y·x]``, i.e.
    ``Σ_all c_ui (p_ui - x_u·y_i)²`` with the constant ``Σ_nz |c|`` as ``implicit`` counts it.
    ``gram`` is ``FᵀF`` without λ. Accumulated in float64.
    """
    x = np.asarray(x, dtype=np.float32)
    quad = float(_rowdot(x.astype(np.float64), x.astype(np.float64) @ np.asarray(gram, dtype=np.float64)).sum())
    total, conf = quad, 0.0
    indptr = shard.indptr
    rows_all = np.repeat(np.arange(shard.rows, dtype=np.int64), np.diff(indptr))
    for lo in range(0, shard.nnz, LOSS_BLOCK_NNZ):
        hi = min(lo + LOSS_BLOCK_NNZ, shard.nnz)
        c = shard.data[lo:hi].astype(np.float64)
        d = _rowdot(np.take(Y, shard.local[lo:hi], axis=0), np.take(x, rows_all[lo:hi], axis=0)).astype(np.float64)
        a = np.abs(c)
        total += float((a + (np.where(c > 0, -2.0 * c, 0.0) + (a - 1.0) * d) * d).sum())
        conf += float(a.sum())
    return total, conf


def training_loss(
    C: sp.csr_matrix, user_factors: np.ndarray, item_factors: np.ndarray, regularization: float
) -> float:
    """``implicit``'s normalised training loss of factors on confidence matrix ``C`` (= alpha x X).

    ``(Σ c_ui (p_ui - x_u·y_i)² + λ(Σ‖x_u‖² + Σ‖y_i‖²)) / (Σ_nz |c| + n_users·n_items - nnz)``;
    the same number as ``implicit.cpu._als.calculate_loss`` (vectorised, float64 sums).
    """
    C = sp.csr_matrix(C, dtype=np.float32)
    X = np.asarray(user_factors, dtype=np.float32)
    Y = np.asarray(item_factors, dtype=np.float32)
    shard = make_shards(C, 1)[0]
    Y64 = Y.astype(np.float64)
    part, conf = loss_terms(shard, X, Y[shard.cols], Y64.T @ Y64)
    norms = float((X.astype(np.float64) ** 2).sum() + (Y64**2).sum())
    return _normalise(part, conf, norms, regularization, C.shape, C.nnz)


def _normalise(part: float, conf: float, norms: float, reg: float, shape: tuple[int, int], nnz: int) -> float:
    return (part + reg * norms) / (conf + shape[0] * shape[1] - nnz)


def gather_rows(parts: Sequence[np.ndarray], bounds: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` (sorted global indices) of the row-wise concatenation of ``parts``.

    ``bounds[s]`` is the first global row of ``parts[s]`` (``bounds[-1]`` the total); avoids ever
    concatenating the full factor matrix on a worker.
    """
    f = parts[0].shape[1]
    out = np.empty((len(rows), f), dtype=np.float32)
    pos = np.searchsorted(rows, bounds)
    for s, part in enumerate(parts):
        a, b = int(pos[s]), int(pos[s + 1])
        if b > a:
            np.take(part, rows[a:b] - bounds[s], axis=0, out=out[a:b])
    return out


# ---------------------------------------------------------------------- Ray tasks
def _solve_task(
    shard: Shard,
    x_prev: np.ndarray | None,
    gram_reg: np.ndarray,
    bounds: np.ndarray,
    solver: str,
    cg_steps: int,
    *fixed: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """One shard of a half-step: new factors float32 [rows, f] and their Gram float64 [f, f]."""
    Y = gather_rows(fixed, bounds, shard.cols)
    if solver == "cg":
        x = solve_cg(shard, x_prev, Y, gram_reg, cg_steps)  # type: ignore[arg-type]
    else:
        x = solve_exact(shard, Y, gram_reg)
    x64 = x.astype(np.float64)
    return x, x64.T @ x64


def _warm_task(hold_s: float = 0.05) -> int:
    """Start a worker and run the kernel once on a toy shard; returns the worker's pid.

    Holding the CPU ``hold_s`` makes the warm tasks of one fit land on distinct workers.
    """
    import os

    shard = make_shards(sp.csr_matrix(np.eye(4, dtype=np.float32)), 1)[0]
    Y = np.ones((4, 2), dtype=np.float32)
    solve_cg(shard, np.zeros((4, 2), dtype=np.float32), Y, np.eye(2, dtype=np.float32), 1)
    time.sleep(hold_s)
    return os.getpid()


def _loss_task(shard: Shard, x: np.ndarray, gram: np.ndarray, bounds: np.ndarray, *fixed: np.ndarray) -> tuple[float, float]:
    return loss_terms(shard, x, gather_rows(fixed, bounds, shard.cols), gram)


@register_twin
class DistributedALS(ClusterTwin, ALS):
    """Implicit ALS fitted on a Ray cluster; saves and serves as a plain :class:`ALS`.

    Same objective, initialisation (``random_state``: item and user factors drawn exactly as
    ``implicit`` draws them) and solver as :class:`ALS`, so at equal seed, factors and iterations
    the factors agree with the single-machine model up to float32 rounding.

    Parameters
    ----------
    **params : every :class:`ALS` hyperparameter (factors, regularization, alpha, iterations,
        random_state, ...); ``num_threads`` is unused: each task runs on the CPU Ray gives it
    shards : user shards and item shards per half-step; None = 2 per cluster CPU
    solver : "cg" (``cg_steps`` warm-started conjugate-gradient steps, as implicit) or "cholesky"
    calculate_training_loss : compute implicit's training loss after every iteration (one more
        pass over the data per iteration) into ``loss_history_``
    address : Ray cluster to connect to if this process is not connected yet (see
        :func:`scalerec.cluster.ray_executor.connect`)
    task_retries : times Ray reruns a shard task whose worker or node died

    Attributes
    ----------
    user_factors_, item_factors_ : float32 [n_users, f], [n_items, f]
    loss_history_ : list of float, one per iteration (empty unless calculate_training_loss)
    shard_stats_ : dict with shard counts, nonzeros, object-store bytes moved per half-step,
        ``setup_s`` (connect, shards, worker warm-up) and ``iteration_s`` (seconds of each iteration)
    """

    cluster_params: ClassVar[tuple[str, ...]] = (
        "shards", "solver", "cg_steps", "calculate_training_loss", "address", "task_retries"
    )

    def __init__(
        self,
        *,
        shards: int | None = None,
        solver: str = "cg",
        cg_steps: int = 3,
        calculate_training_loss: bool = False,
        address: str | None = None,
        task_retries: int = DEFAULT_TASK_RETRIES,
        **params: Any,
    ) -> None:
        super().__init__(**params)  # ALS's hyperparameters, unchanged
        self.shards = shards
        self.solver = solver
        self.cg_steps = cg_steps
        self.calculate_training_loss = calculate_training_loss
        self.address = address
        self.task_retries = task_retries

    def _validate_params(self) -> None:
        super()._validate_params()
        if self.solver not in SOLVERS:
            raise ValidationError(f"DistributedALS solver must be one of {SOLVERS}, got {self.solver!r}")
        if self.shards is not None and (isinstance(self.shards, bool) or int(self.shards) < 1):
            raise ValidationError(f"DistributedALS shards must be >= 1 or None (2 per CPU), got {self.shards!r}")
        if isinstance(self.cg_steps, bool) or int(self.cg_steps) < 1:
            raise ValidationError(f"DistributedALS cg_steps must be >= 1, got {self.cg_steps!r}")

    def _fit(self, X: sp.csr_matrix, progress: Progress | None) -> None:
        import ray

        from scalerec.cluster.ray_executor import cluster_cpus, connect

        started = time.perf_counter()
        connect(self.address)
        retries = int(self.task_retries)
        # Start every CPU's worker process and import this module there now, overlapped with the
        # driver's shard building below, so the first iteration costs what the others do.
        warm = ray.remote(_warm_task).options(num_cpus=1, max_retries=retries, scheduling_strategy="SPREAD")
        warming = [warm.remote() for _ in range(cluster_cpus())]
        f, reg = int(self.factors), float(self.regularization)
        C = sp.csr_matrix(X, dtype=np.float32)
        if float(self.alpha) != 1.0:
            C = C * np.float32(self.alpha)
        Ct = C.T.tocsr()
        n_users, n_items = C.shape
        n_shards = int(self.shards) if self.shards is not None else 2 * cluster_cpus()
        user_shards, item_shards = make_shards(C, n_shards), make_shards(Ct, n_shards)
        u_bounds = np.array([s.start for s in user_shards] + [n_users], dtype=np.int64)
        i_bounds = np.array([s.start for s in item_shards] + [n_items], dtype=np.int64)

        # implicit's initialisation, drawn shard by shard from one generator (users first): the
        # same numbers as one big draw, without the driver ever holding all factors at once.
        rng = np.random.default_rng(self.random_state)
        X_refs, Y_refs = [], []
        gram_x = np.zeros((f, f))
        gram_y = np.zeros((f, f))
        for s in user_shards:
            block = rng.random((s.rows, f), dtype=np.float32) * np.float32(0.01)
            gram_x += block.T.astype(np.float64) @ block
            X_refs.append(ray.put(block))
        for s in item_shards:
            block = rng.random((s.rows, f), dtype=np.float32) * np.float32(0.01)
            gram_y += block.T.astype(np.float64) @ block
            Y_refs.append(ray.put(block))
        u_refs = [ray.put(s) for s in user_shards]
        i_refs = [ray.put(s) for s in item_shards]

        solve = ray.remote(_solve_task).options(num_returns=2, num_cpus=1, max_retries=retries)
        loss = ray.remote(_loss_task).options(num_cpus=1, max_retries=retries)
        eye = reg * np.eye(f)
        cholesky = self.solver == "cholesky"
        inflight: list[Any] = []

        def half_step(shard_refs: list[Any], prev: list[Any], fixed: list[Any], bounds: np.ndarray, gram: np.ndarray):
            gram_reg = gram + eye
            g = gram_reg if cholesky else gram_reg.astype(np.float32)
            outs = [
                solve.remote(ref, None if cholesky else p, g, bounds, self.solver, int(self.cg_steps), *fixed)
                for ref, p in zip(shard_refs, prev)
            ]
            inflight[:] = [o[0] for o in outs] + [o[1] for o in outs]
            grams = ray.get([o[1] for o in outs])
            return [o[0] for o in outs], np.sum(grams, axis=0)

        self.loss_history_: list[float] = []
        laps: list[float] = []
        try:
            ray.get(warming)
            setup_s = time.perf_counter() - started
            for it in range(int(self.iterations)):
                lap = time.perf_counter()
                X_refs, gram_x = half_step(u_refs, X_refs, Y_refs, i_bounds, gram_y)
                Y_refs, gram_y = half_step(i_refs, Y_refs, X_refs, u_bounds, gram_x)
                if self.calculate_training_loss:
                    parts = ray.get(
                        [loss.remote(ref, x, gram_y, i_bounds, *Y_refs) for ref, x in zip(u_refs, X_refs)]
                    )
                    part, conf = (float(v) for v in np.sum(parts, axis=0))
                    norms = float(np.trace(gram_x) + np.trace(gram_y))
                    self.loss_history_.append(_normalise(part, conf, norms, reg, C.shape, C.nnz))
                laps.append(time.perf_counter() - lap)
                if progress is not None:
                    progress(it + 1, int(self.iterations))
            user_factors = np.concatenate(ray.get(X_refs)) if X_refs else np.zeros((0, f), np.float32)
            item_factors = np.concatenate(ray.get(Y_refs)) if Y_refs else np.zeros((0, f), np.float32)
        except BaseException:
            for ref in inflight:
                ray.cancel(ref, force=True)
            raise
        if not (np.isfinite(user_factors).all() and np.isfinite(item_factors).all()):
            raise ValidationError(
                "DistributedALS diverged (non-finite factors); increase regularization or lower alpha"
            )
        self.user_factors_ = np.ascontiguousarray(user_factors, dtype=np.float32)
        self.item_factors_ = np.ascontiguousarray(item_factors, dtype=np.float32)
        factor_bytes = 4 * f * (n_users + n_items)
        self.shard_stats_ = {
            "user_shards": len(user_shards),
            "item_shards": len(item_shards),
            "nnz": int(C.nnz),
            "matrix_bytes": int(sum(s.nbytes for s in user_shards) + sum(s.nbytes for s in item_shards)),
            # per iteration every task reads all fixed factors (once per node) and writes its own
            "factor_bytes_per_iteration": int(factor_bytes),
            # driver set-up (connect, shards, puts, worker start) apart from the iterations
            "setup_s": float(setup_s),
            "iteration_s": [float(x) for x in laps],
        }
