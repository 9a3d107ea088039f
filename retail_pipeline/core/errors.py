"""The one exception the core raises for input it cannot use."""

from __future__ import annotations


class RetailInputError(ValueError):
    """Input the pipeline cannot use: a missing or broken file, a failed download, bad data.

    The message says which file (and sheet or column, where one is at fault), what is wrong
    with it, and what to do about it, so that it can be shown to a user as it is. It derives
    from ``ValueError`` so that callers who only know the standard library can still catch it.
    """
