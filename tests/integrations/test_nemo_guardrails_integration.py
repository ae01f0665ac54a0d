"""NeMo Guardrails with a harmlens input rail: examples/integrations/nemo_rails/ (config.yml, rails.co, actions.py)
run by examples/integrations/nemo_check.py against a real guarded server, which is also NeMo's main model (its
OpenAI-compatible engine), so the whole rails flow runs offline: input rail -> /v1/moderations -> refuse, or the
message goes on to the main model.

NeMo Guardrails runs in its own venv ($HARMLENS_NEMOGUARDRAILS_PYTHON, default ../venv-nemoguardrails; tested with
nemoguardrails 0.24.1, install command in docs/serving.md); without it this test skips."""

from __future__ import annotations

import pytest
from integration_helpers import ALLOWED, FLAGGED, json_lines, run_tool
from serve_helpers import API_KEY, tool_python

PYTHON, WHY = tool_python("nemoguardrails", "nemoguardrails")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(PYTHON is None, reason=WHY)]


def test_input_rail_blocks_what_the_guard_flags(guarded_server):
    env = {"HARMLENS_API_BASE": guarded_server.base, "HARMLENS_API_KEY": API_KEY}
    blocked, allowed = json_lines(run_tool(PYTHON, ["nemo_check.py", FLAGGED, ALLOWED], env).stdout)

    # flagged: the harmlens rail ran its action, stopped the flow, and NeMo answered with the rail's refusal
    # (not the server's: the main model was never asked)
    assert blocked["blocked"] and blocked["reply"] == "I'm sorry, I can't respond to that."
    rail = blocked["rails"][0]
    assert (rail["type"], rail["name"], rail["stop"]) == ("input", "harmlens input check", True)
    assert rail["actions"][0] == "harmlens_check" and "stop" in rail["decisions"]

    # allowed: the rail let it through and the main model (the guarded server) answered; the reply is the server's
    # own greedy reply to the same message (max_tokens 32 from config.yml)
    assert not allowed["blocked"]
    assert allowed["rails"][0]["actions"] == ["harmlens_check"] and not allowed["rails"][0]["stop"]
    assert allowed["reply"] == guarded_server.chat(ALLOWED, max_tokens=32)["choices"][0]["message"]["content"]
