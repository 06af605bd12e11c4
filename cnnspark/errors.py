"""One error hierarchy. Every message says what failed, on which file or table, and what to do."""


class CnnsparkError(Exception):
    """Base class of every error cnnspark raises on purpose; the CLI prints it without a traceback."""

    exit_code = 2


class ConfigError(CnnsparkError):
    """A flag, size or configuration value is invalid."""


class SourceError(CnnsparkError):
    """The ingest source cannot be listed or holds no files."""


class LakeError(CnnsparkError):
    """A lake or one of its tables is missing, unreadable or inconsistent."""


class IntegrityError(LakeError):
    """Stored bytes do not hash to their recorded ids (verify and rebuild raise it)."""

    exit_code = 1
