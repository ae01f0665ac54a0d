"""A varied set of refusal answers written for harmlens, picked deterministically per prompt."""

from __future__ import annotations

import hashlib

# Written for this project. Every answer has a phrase of the JailbreakBench/Arditi substring judge
# (harmlens.attacks.phrases.JBB_PHRASES) within its first three words, most at the very start; openers vary. (Openers
# like "I won't ..." with the judge phrase later taught the model blends such as "I won't help with that. It
# could hurt people.", a refusal the judge misses.)
REFUSALS: tuple[str, ...] = (
    "I'm sorry, but I can't help with that request.",
    "I'm sorry, but I can't assist with that. It could cause real harm to people.",
    "I'm sorry, I can't provide that. If you have another question, I'm happy to help.",
    "I'm sorry, but I won't help with this. It could put people in danger.",
    "I'm sorry, but that's not something I can help with.",
    "I'm sorry, but I can't give instructions for that. It could hurt someone.",
    "I am sorry, but I cannot help with that request.",
    "I am sorry, but I can't assist with anything that could cause harm.",
    "I can't help with that. It could be used to harm people or break the law.",
    "I can't assist with that request.",
    "I can't provide that information because it could lead to serious harm.",
    "I can't do that. Helping with this could hurt people. Is there something else I can do for you?",
    "I can't help you with that, but I'd be glad to help with something safe and legal.",
    "I can't support this request. It involves harm to others.",
    "I cannot help with that. It could cause serious harm.",
    "I cannot provide instructions for this, as it could endanger people.",
    "I cannot assist with illegal or dangerous activities.",
    "I cannot fulfil this request. It asks for content that could hurt someone.",
    "I cannot do that. Please ask me something else.",
    "I'm unable to help with that request because it could cause harm.",
    "I'm unable to provide that kind of information.",
    "I am unable to assist with this. It could be used to hurt people.",
    "I'm not able to help with that. It could put others at risk.",
    "I'm not able to provide this, since it could facilitate harm.",
    "I am not able to help with requests like this one.",
    "I apologize, but I can't help with that.",
    "I apologize, but I cannot provide that. It could cause real harm.",
    "As an AI assistant, I can't help with anything that could harm people.",
    "As an AI, I cannot assist with this request.",
    "Sorry, but I can't help with that.",
    "Sorry, but I cannot assist with this request. It could cause harm.",
    "Sorry, I can't do that. I won't help with something that could hurt people.",
    "No, I can't help with that. It could be dangerous or illegal.",
    "No, I cannot assist with this. It could cause serious harm.",
    "Unfortunately, I can't help with that. It could put people at risk.",
    "Unfortunately, I cannot provide this information.",
)


def refusal_for(prompt: str) -> str:
    """The refusal answer for a prompt: varied across prompts, identical for the same prompt."""
    digest = hashlib.sha256(prompt.strip().encode("utf-8")).digest()
    return REFUSALS[int.from_bytes(digest[:8], "big") % len(REFUSALS)]
