"""Distributed item-kNN: the item x item similarity computed in item blocks as Ray tasks.

Each task takes a contiguous block of items, multiplies their weighted columns with the whole
weighted matrix (shared once through the object store) and keeps each row's ``neighbors`` best
other items; the driver stacks the blocks. Same weighting and pruning as
:class:`scalerec.models.knn.ItemKNN`, so the similarity matrix is the same (ties at the k-th
neighbour are broken by column index here; ``implicit``'s top-k heap may keep another of the
tied items).

EASE is not distributed: its closed form needs the inverse of one dense n_items x n_items Gram
matrix, which does not split into independent blocks; it stays single-machine and refuses
catalogues above ``[models] ease_max_items``.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp

from scalerec.cluster.twin import ClusterTwin, register_twin
from scalerec.errors import ValidationError
from scalerec.models.base import Progress
from scalerec.models.knn import ItemKNN, prune_rows

#: entries of one block's similarity product kept in memory at once (~ 12 bytes each)
BLOCK_ENTRIES = 4_000_000


def similarity_block(Wt: sp.csr_matrix, W: sp.csr_matrix, start: int, stop: int, k: int) -> sp.csr_matrix:
    """Rows ``[start, stop)`` of the pruned item x item similarity; csr float32 [stop - start, n_items].

    ``W`` is the weighted user x item matrix (csr), ``Wt`` its transpose (csr); row ``i`` keeps the
    ``k`` largest non-zero similarities of item ``start + i`` to other items.
    """
    P = (Wt[start:stop] @ W).tocoo()
    keep = (P.row + start != P.col) & (P.data != 0)
    S = sp.csr_matrix(
        (P.data[keep].astype(np.float32), (P.row[keep], P.col[keep])), shape=(stop - start, W.shape[1])
    )
    S.sort_indices()
    return prune_rows(S, k)


def _block_task(Wt: sp.csr_matrix, W: sp.csr_matrix, start: int, stop: int, k: int) -> sp.csr_matrix:
    return similarity_block(Wt, W, start, stop, k)


@register_twin
class DistributedItemKNN(ClusterTwin, ItemKNN):
    """Item-kNN whose similarity is computed on a Ray cluster; saves and serves as :class:`ItemKNN`.

    Parameters
    ----------
    **params : every :class:`ItemKNN` hyperparameter (similarity, neighbors, ...)
    block_items : items per task; None = sized so one block's product stays near
        ``BLOCK_ENTRIES`` entries, and at least two blocks per cluster CPU
    address : Ray cluster to connect to if not connected yet
    task_retries : times Ray reruns a block task whose worker or node died
    """

    cluster_params: ClassVar[tuple[str, ...]] = ("block_items", "address", "task_retries")

    def __init__(
        self,
        *,
        block_items: int | None = None,
        address: str | None = None,
        task_retries: int = 3,
        **params: Any,
    ) -> None:
        super().__init__(**params)  # ItemKNN's hyperparameters, unchanged
        self.block_items = block_items
        self.address = address
        self.task_retries = task_retries

    def _validate_params(self) -> None:
        super()._validate_params()
        if self.block_items is not None and (isinstance(self.block_items, bool) or int(self.block_items) < 1):
            raise ValidationError(f"DistributedItemKNN block_items must be >= 1 or None, got {self.block_items!r}")

    def _fit(self, X: sp.csr_matrix, progress: Progress | None) -> None:
        import ray

        from scalerec.cluster.ray_executor import cluster_cpus, connect

        connect(self.address)
        n_items = X.shape[1]
        W = sp.csr_matrix(self.weighted_matrix(X))
        Wt = W.T.tocsr()
        k = n_items if self.neighbors is None else min(int(self.neighbors), n_items)
        if self.block_items is not None:
            block = int(self.block_items)
        else:
            block = max(1, min(BLOCK_ENTRIES // max(1, n_items), math.ceil(n_items / (2 * cluster_cpus()))))
        starts = list(range(0, n_items, block))
        task = ray.remote(_block_task).options(num_cpus=1, max_retries=int(self.task_retries))
        W_ref, Wt_ref = ray.put(W), ray.put(Wt)
        refs = [task.remote(Wt_ref, W_ref, a, min(a + block, n_items), k) for a in starts]
        parts: dict[Any, sp.csr_matrix] = {}
        try:
            pending = list(refs)
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                parts[done[0]] = ray.get(done[0])
                if progress is not None:
                    progress(len(parts), len(refs))
        except BaseException:
            for ref in refs:
                ray.cancel(ref, force=True)
            raise
        S = sp.vstack([parts[r] for r in refs], format="csr", dtype=np.float32) if refs else sp.csr_matrix((0, 0))
        S.sort_indices()
        self.similarity_ = S
        self.user_items_ = X
