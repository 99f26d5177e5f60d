"""Built-in analyses: they run after a run's cells, on its records (plugins like any other)."""
