"""Method plugins. Importing this package registers every plugin below; a new method is one new file here
plus one import line."""
from . import fast_at, float, floats, oat, oats, pgd_at, smart  # noqa: F401  (registers them)
from .base import Method, get_method, method_names, register  # noqa: F401
