"""The one base class of every user-facing refusal.

A ``Refusal`` means the user's input (config, data, model file, endpoint, budget) cannot be
used: it is raised before any query is spent, its message is one sentence in the form
"expected …, got …", and the command line prints it and exits with code 2. Any other
exception escaping the toolkit is a bug: exit code 1 with its traceback.

It subclasses ``ValueError`` so that code written against the earlier, looser contract
(``except ValueError``) still catches it.
"""
from __future__ import annotations


class Refusal(ValueError):
    """Bad input, refused before any query was spent."""
