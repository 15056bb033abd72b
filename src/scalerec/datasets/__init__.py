"""Dataset plug-ins: import presets and evaluation protocols of public datasets, and the synthetic shop.

Importing this package registers the built-in presets (``--preset online-retail``, ``movielens``)
and splits (``--split online-retail``); the registries import it on their first lookup, so the
core never names a dataset. A new dataset is a module here that calls ``register_preset`` /
``register_split`` and is imported below.
"""

# Registration order is the order --help lists them in.
from scalerec.datasets import online_retail  # noqa: F401,I001 - registers itself
from scalerec.datasets import movielens  # noqa: F401 - registers itself

__all__ = ["movielens", "online_retail"]
