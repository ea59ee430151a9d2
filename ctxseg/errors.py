"""Errors a user can cause. The CLI prints them as one clear message and exits with code 2."""


class UserError(Exception):
    """A problem with the user's input (recipe, file, data), not a bug in ctxseg."""
