"""The Ray backend: RayExecutor (ray_executor), distributed twins of local families (als, knn), Ray Serve (serve).

Everything here needs Ray (``pip install 'scalerec[ray]'``); the Executor seam itself is
``scalerec.execution``. Importing this package registers the cluster twins (see ``twin``).
"""

from scalerec.cluster import als, knn  # noqa: F401  (register_twin on import)
from scalerec.cluster.twin import ClusterTwin, register_twin, registered_twins, twin_for

__all__ = ["ClusterTwin", "register_twin", "registered_twins", "twin_for"]
