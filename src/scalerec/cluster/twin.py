"""Cluster twins: a model whose fit runs on Ray but which saves, loads and serves as its local family.

Twins register themselves by family (:func:`register_twin`); ``RayExecutor.adapt_model`` looks
them up with :func:`twin_for`, so a new twin needs no edit elsewhere.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar, Self, TypeVar

from scalerec.models.base import MATRIX_PARAMS, Recommender


class ClusterTwin(Recommender):
    """Mixin for ``class DistributedX(ClusterTwin, X)``: same hyperparameters as X plus cluster options.

    Only ``fit`` differs. :meth:`to_local` returns the plain X with the learned state, and
    :meth:`save` writes that, so a version trained on a cluster is an ordinary X for the registry,
    for serving and for ``Recommender.load``.
    """

    #: hyperparameters that only steer the distributed fit (absent from the local family)
    cluster_params: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def _param_names(cls) -> list[str]:
        # The local family's hyperparameters (whatever they become) plus the cluster options:
        # twins take the former as **params and pass them through, so they never fall behind.
        return [*cls.local_class()._param_names(), *cls.cluster_params]

    @classmethod
    def local_class(cls) -> type[Recommender]:
        for klass in cls.__mro__[1:]:
            if issubclass(klass, Recommender) and not issubclass(klass, ClusterTwin) and klass.family == cls.family:
                return klass
        raise TypeError(f"{cls.__name__} has no local model family")  # pragma: no cover

    @classmethod
    def from_model(cls, model: Recommender, **cluster_options: Any) -> Self:
        """The twin of an unfitted local model: its hyperparameters plus ``cluster_options``."""
        options = {k: v for k, v in cluster_options.items() if k in cls.cluster_params}
        return cls(**model.get_params(), **options)

    def to_local(self) -> Recommender:
        """The local-family model with this model's hyperparameters and learned state."""
        klass = self.local_class()
        names = set(klass._param_names()) | set(MATRIX_PARAMS)
        local = klass(**{k: v for k, v in self.get_params().items() if k in names})
        for name, value in vars(self).items():
            if name.endswith("_") and not name.startswith("_"):
                setattr(local, name, value)
        return local

    def save(self, path: str | os.PathLike[str]) -> None:
        """Save as the local family (see :meth:`to_local`)."""
        self.to_local().save(path)


TwinT = TypeVar("TwinT", bound=type[ClusterTwin])

_TWINS: dict[str, type[ClusterTwin]] = {}


def register_twin(cls: TwinT) -> TwinT:
    """Class decorator: make ``cls`` the cluster twin of its family; raises TypeError on a second one."""
    if not (isinstance(cls, type) and issubclass(cls, ClusterTwin)):
        raise TypeError(f"{cls!r} is not a ClusterTwin")
    known = _TWINS.get(cls.family)
    if known is not None and known is not cls:
        raise TypeError(f"family {cls.family!r} already has the cluster twin {known.__name__}")
    cls.local_class()  # fails now, not at the first adapt_model, when there is no local family
    _TWINS[cls.family] = cls
    return cls


def twin_for(family: str) -> type[ClusterTwin] | None:
    """The registered cluster twin of model family ``family``, or None."""
    return _TWINS.get(family)


def registered_twins() -> dict[str, type[ClusterTwin]]:
    """Family -> cluster twin, for every registered twin."""
    return dict(_TWINS)
