"""Clinical image interoperability adapter: clinical photos in, FHIR R4/R5 records under the
patient's consent out."""

from adapter.config import Settings
from adapter.errors import AdapterError

__version__ = "0.1.0"
__all__ = ["AdapterError", "Settings", "__version__"]
