"""lowdim-bench: compare low-dimensional methods on standard suites."""
__version__ = "0.1.0"
