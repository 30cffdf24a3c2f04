"""The one user-error type of the project.

    from data_pipeline.errors import UserError
    raise UserError(f"{path}: expected a shard directory with manifest.json")

Bad input (a recipe key, a path, a file that fails its checks) raises UserError with one line that
names the file, key or value and what was expected. Every command prints it as `error: ...` and
exits 2. Any other exception is a bug and keeps its traceback: a plain ValueError from an internal
check is never shown as the user's mistake.

It subclasses ValueError so that code asking "was this value acceptable?" keeps working.
"""


class UserError(ValueError):
    """Bad input: printed on one line, exit status 2, no traceback."""
