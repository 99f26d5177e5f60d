"""A plugin's `preload` module that fails at import with something other than ImportError
(tests/test_warm.py): the warm server must survive it."""
raise RuntimeError("broken at import")
