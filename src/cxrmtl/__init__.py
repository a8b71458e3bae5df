"""cxrmtl: one shared network for all ChestX-ray14 findings and auxiliary tasks."""

__version__ = "0.1.0"
