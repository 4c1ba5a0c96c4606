"""User-facing errors: one line, naming the fix. run_all.py prints them without a traceback."""


class LambenchError(Exception):
    """A problem the user can fix (bad flag, missing data, corrupt checkpoint, diverged training)."""


class DataError(LambenchError):
    pass


class CheckpointError(LambenchError):
    pass


class TrainingDiverged(LambenchError):
    pass


class StoreError(LambenchError):
    """A damaged file of the results store (config.json, eval.json, rows.csv, a lambda's rows)."""
