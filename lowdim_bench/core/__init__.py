"""The layer below the runner: cells, records, events, the environment and the run store.

Nothing here imports the runner, the executors, the CLI or the app, so the flow
suite -> cells -> executor -> records -> store -> views has no arrow pointing back.
"""
