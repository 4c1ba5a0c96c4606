"""User-facing errors: one line, naming the fix. run_all.py prints them without a traceback."""


class LambenchError(Exception):
    """A problem the user can fix (bad flag, missing data, corrupt checkpoint, diverged training)."""


class DataError(LambenchError):
    pass


class CheckpointError(LambenchError):
    pass


class TrainingDiverged(LambenchError):
    pass
