"""One exception type whose message is a single line naming the problem, so CLIs can print it as is."""

from __future__ import annotations


class HarmlensError(ValueError):
    """Bad input or an unusable artefact; the message is one line meant for the user."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))
