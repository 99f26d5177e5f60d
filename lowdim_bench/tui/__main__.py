"""`python -m lowdim_bench.tui [SUITE.toml ...] [--reports DIR]`: the app with extra suite files."""
from .app import main

raise SystemExit(main())
