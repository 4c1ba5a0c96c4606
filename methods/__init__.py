"""Method plugins. Importing this package registers every plugin below; a new method is one new file here
plus one import line."""
from . import fast_at, float, oat, pgd_at  # noqa: F401  (registration side effects)
from .base import Method, get_method, method_names, register  # noqa: F401
