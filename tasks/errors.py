"""The one base class for errors a user can act on: the CLI prints their message, no traceback."""


class PipelineError(RuntimeError):
    """A clear, expected failure: bad parameters, a bad source, too many failed clips."""
