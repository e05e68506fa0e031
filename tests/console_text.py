"""What a command printed, read as a user reads it: a line over 120 columns continues on the next
line, indented (nnlab._text.fit), so a message is compared with runs of white space as one space."""

from __future__ import annotations


def flat(text: str) -> str:
    """``text`` with every run of white space (a wrapped line's break and indent) as one space."""
    return " ".join(text.split())


def shows(text: str, fragment: str) -> bool:
    """Whether ``fragment`` appears in ``text``, white space compared as above."""
    return flat(fragment) in flat(text)
