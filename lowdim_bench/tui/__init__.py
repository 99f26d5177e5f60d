"""The Textual app (`lowdim-bench` with no arguments). Only this package imports Textual.

`model.py` holds everything the app computes (catalog, overrides, result tables, chart data,
the reports list) as plain functions without Textual, so it is tested and timed on its own and
runs off the UI thread.
"""
