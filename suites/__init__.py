"""Standard suites. This folder is installed as package data (lowdim_bench_suites)."""
