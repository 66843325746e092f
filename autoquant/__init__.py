"""autoquant: find, unattended, the best mixed-precision INT8 quantization of a trained network.

Everything public is in `autoquant.api` and re-exported here.
"""

from .api import *
from .api import __all__  # noqa: F401
