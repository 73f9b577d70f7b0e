"""The one base class of the errors a user can cause (a bad setting, a missing file, a
folder that another run claimed), so the command line can report them all in one line
without importing the stage that raised one.

Each stage's error keeps its own class, in its own module, and its older base
(``ValueError``, ``RuntimeError``) beside this one, so ``except ValueError`` still works.
Programming errors (a bug) are not ``UsvRayError``: they keep their traceback.
"""

from __future__ import annotations

__all__ = ["UsvRayError"]


class UsvRayError(Exception):
    """An error the user can fix: its message says what went wrong and what to do."""
