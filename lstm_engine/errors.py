"""The one exception family for everything that goes wrong while loading a model."""


class ModelError(ValueError):
    """A model file, state dict or `Model` that the engine cannot run as given.

    Subclasses ValueError so callers that already catch bad input keep working.
    The message always names the offending node, key or field and what to do.
    """
