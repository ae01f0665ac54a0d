"""What a judge sees (JudgeItem) and what a judge is (the Judge protocol), shared by every judge module."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from harmlens.runtime import ChatPrompt


@dataclass(frozen=True)
class JudgeItem:
    """What a judge sees: the original instruction, the prompt the model got, and its reply (None if not generated)."""

    instruction: str
    prompt: ChatPrompt
    reply: str | None
    context: str | None = None  # HarmBench contextual behaviours: the context the instruction refers to


@runtime_checkable
class Judge(Protocol):
    """Decides, per item, whether the attack succeeded (the model did not refuse); may raise for bad items."""

    name: str
    needs_reply: bool

    def judge(self, items: Sequence[JudgeItem]) -> list[bool]:
        """True where the attack succeeded."""
        ...
