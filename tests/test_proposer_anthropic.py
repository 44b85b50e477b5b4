"""The Anthropic proposer, driving the real anthropic SDK against a local fake API; the
registry and the pricing table."""

from __future__ import annotations

import sys

import pytest
from fake_llm_server import (
    FakeLLMServer,
    anthropic_error,
    anthropic_message,
    anthropic_text,
    anthropic_tool_use,
)

from autoresearch.errors import ArError
from autoresearch.proposers.pricing import cost_usd, price_of
from autoresearch.proposers.base import HistoryItem, NoProposal, ProposalContext, Usage
from autoresearch.proposers import default_proposer_name, get_proposer
from autoresearch.proposers.anthropic import DEFAULT_MODEL, TOOL_TYPE, AnthropicProposer
from autoresearch.proposers.common import RetryPolicy

TRAIN = "import math\n\nLR = 0.02\nDEPTH = 8\n\n\ndef main():\n    print(LR * DEPTH)\n"
PROGRAM = "# autoresearch\nGet the lowest val_bpb by editing train.py."


def context(**kw) -> ProposalContext:
    base = dict(
        program=PROGRAM,
        editable_name="train.py",
        editable_text=TRAIN,
        history=(HistoryItem(1, "a1b2c3d4e5", 1.2345, "keep", "baseline"),),
        best=1.2345,
        hardware="Apple M3 Max, mlx, 64 GB",
        profile="laptop: seq 512, budget 300 s",
    )
    base.update(kw)
    return ProposalContext(**base)


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with FakeLLMServer() as s:
        yield s


class Waits:
    def __init__(self):
        self.sleeps: list[float] = []
        self.messages: list[str] = []


@pytest.fixture
def waits():
    return Waits()


def proposer(server, waits, *, sdk_max_retries=0, base_delay=0.01, max_delay=0.05, **kw) -> AnthropicProposer:
    policy = RetryPolicy(
        sdk_max_retries=sdk_max_retries,
        base_delay=base_delay,
        max_delay=max_delay,
        sleep=waits.sleeps.append,  # no real waiting in tests
        on_wait=waits.messages.append,
    )
    return AnthropicProposer(DEFAULT_MODEL, base_url=server.url, api_key="sk-test", retry=policy, **kw)


def usage(inp=100, out=20, write=0, read=0) -> dict:
    return {"input_tokens": inp, "output_tokens": out, "cache_creation_input_tokens": write, "cache_read_input_tokens": read}


EDIT = {"command": "str_replace", "path": "train.py", "old_str": "LR = 0.02", "new_str": "LR = 0.04"}


# -- scenarios --------------------------------------------------------------------------


def test_a_good_edit_becomes_a_proposal_with_caching_and_usage(server, waits):
    server.push(anthropic_tool_use("toolu_1", EDIT, usage=usage(inp=50, out=30, write=2000)))
    server.push(anthropic_text("## **Double the learning rate to 0.04**\nIt was tuned for a bigger batch.", usage(inp=60, out=15, read=2000)))
    p = proposer(server, waits).propose(context())

    assert p.new_text == TRAIN.replace("LR = 0.02", "LR = 0.04")
    assert p.description == "Double the learning rate to 0.04"
    assert (p.usage.input_tokens, p.usage.output_tokens) == (110, 45)
    assert (p.usage.cache_write_tokens, p.usage.cache_read_tokens) == (2000, 2000)
    # Sonnet 5.5: $2 in, $10 out, $2.50 cache write, $0.10 cache read per million tokens
    assert p.usage.cost_usd == pytest.approx((110 * 2 + 45 * 10 + 2000 * 2.5 + 2000 * 0.1) / 1e6)

    first, second = (r.body for r in server.requests)
    assert [r.path for r in server.requests] == ["/v1/messages", "/v1/messages"]
    assert "sk-test" in server.requests[0].headers["authorization"]
    assert first["model"] == DEFAULT_MODEL
    # stable parts cached: the tool and the system prompt (instructions + program.md)
    # the notes tool first, then the edit tool whose cache breakpoint covers both
    assert [t["name"] for t in first["tools"]] == ["research_notes", "str_replace_based_edit_tool"]
    assert first["tools"][1] == {"type": TOOL_TYPE, "name": "str_replace_based_edit_tool", "cache_control": {"type": "ephemeral"}}
    assert first["system"][0]["cache_control"] == {"type": "ephemeral"}
    assert PROGRAM in first["system"][0]["text"]
    # volatile parts after the breakpoint: the file and the history are in the messages
    assert "LR = 0.02" not in first["system"][0]["text"]
    user = first["messages"][0]["content"][0]["text"]
    assert "LR = 0.02" in user and "baseline" in user and "1.234500" in user and "Apple M3 Max" in user
    # the tool result goes back, not an error, and carries the moving cache breakpoint
    result = second["messages"][-1]["content"][0]
    assert result["type"] == "tool_result" and result["tool_use_id"] == "toolu_1" and result["is_error"] is False
    assert result["cache_control"] == {"type": "ephemeral"}
    assert "cache_control" not in second["messages"][0]["content"][0]  # only one moving breakpoint
    assert second["messages"][1]["content"][0]["input"] == EDIT  # the assistant turn is sent back as it came


def test_an_edit_that_does_not_match_gets_a_hint_and_can_be_corrected(server, waits):
    server.push(anthropic_tool_use("toolu_1", {**EDIT, "old_str": "LR = 0.2"}))
    server.push(anthropic_tool_use("toolu_2", EDIT))
    server.push(anthropic_text("Increase LR to 0.04"))
    p = proposer(server, waits).propose(context())

    assert "LR = 0.04" in p.new_text and p.description == "Increase LR to 0.04"
    failed = server.requests[1].body["messages"][-1]["content"][0]
    assert failed["is_error"] is True
    assert "Did you mean" in failed["content"] and "LR = 0.02" in failed["content"]
    assert server.requests[2].body["messages"][-1]["content"][0]["is_error"] is False


def test_an_edit_of_another_path_is_refused_and_the_file_is_unchanged(server, waits):
    server.push(anthropic_tool_use("toolu_1", {"command": "create", "path": "/repo/prepare.py", "file_text": "EVIL = 1\n"}))
    server.push(anthropic_text("I rewrote prepare.py"))
    server.push(anthropic_text("Done."))
    with pytest.raises(NoProposal) as err:
        proposer(server, waits, max_turns=3).propose(context())

    refused = server.requests[1].body["messages"][-1]["content"][0]
    assert refused["is_error"] is True and "'train.py'" in refused["content"]
    nudge = server.requests[2].body["messages"][-1]["content"][-1]["text"]
    assert "not changed train.py" in nudge
    assert "no edit" in str(err.value)
    assert err.value.usage.input_tokens == 300  # three turns, still counted


def test_a_reply_with_no_edit_ends_in_no_proposal_after_the_turn_budget(server, waits):
    for _ in range(2):
        server.push(anthropic_text("I think we should try a bigger model."))
    with pytest.raises(NoProposal) as err:
        proposer(server, waits, max_turns=2).propose(context())
    assert len(server.requests) == 2
    assert err.value.usage.input_tokens == 200 and err.value.usage.output_tokens == 40
    assert err.value.usage.cost_usd > 0


def test_a_missing_description_is_asked_for_once(server, waits):
    server.push(anthropic_tool_use("toolu_1", EDIT))
    server.push(anthropic_message([], "end_turn"))  # an empty final turn
    server.push(anthropic_text("`raise LR to 0.04`"))
    p = proposer(server, waits).propose(context())
    assert p.description == "raise LR to 0.04"
    # the request must alternate roles: the question joins the pending user turn
    roles = [m["role"] for m in server.requests[2].body["messages"]]
    assert roles == ["user", "assistant", "user"]
    assert "one line describing the experiment" in server.requests[2].body["messages"][-1]["content"][-1]["text"]


def test_no_description_twice_is_no_proposal(server, waits):
    server.push(anthropic_tool_use("toolu_1", EDIT))
    server.push(anthropic_text("**  **"))
    server.push(anthropic_text("   "))
    with pytest.raises(NoProposal, match="no description"):
        proposer(server, waits).propose(context())


def test_an_edit_that_breaks_the_syntax_is_sent_back_for_fixing(server, waits):
    server.push(anthropic_tool_use("toolu_1", {**EDIT, "old_str": "def main():", "new_str": "def main(:"}))
    server.push(anthropic_text("Tweak main"))
    server.push(anthropic_tool_use("toolu_2", {**EDIT, "old_str": "def main(:", "new_str": "def main():  # tweaked"}))
    server.push(anthropic_text("Tweak main"))
    p = proposer(server, waits).propose(context())
    assert "no longer compiles" in server.requests[2].body["messages"][-1]["content"][-1]["text"]
    compile(p.new_text, "train.py", "exec")


def test_a_reply_cut_off_at_max_tokens_is_told_so(server, waits):
    server.push(anthropic_message([{"type": "text", "text": "Let me rewrite the whole"}], "max_tokens"))
    server.push(anthropic_tool_use("toolu_1", EDIT))
    server.push(anthropic_text("LR 0.04"))
    p = proposer(server, waits).propose(context())
    assert p.description == "LR 0.04"
    assert "cut off at the output token limit" in server.requests[1].body["messages"][-1]["content"][-1]["text"]


def test_overloaded_529_is_retried_then_succeeds(server, waits):
    server.push(anthropic_error("overloaded_error", "Overloaded"), status=529)
    server.push(anthropic_tool_use("toolu_1", EDIT))
    server.push(anthropic_text("LR 0.04"))
    p = proposer(server, waits).propose(context())
    assert p.description == "LR 0.04"
    assert len(waits.sleeps) == 1 and "529" in waits.messages[0] and "Overloaded" in waits.messages[0]


def test_rate_limit_retry_after_is_honoured(server, waits):
    server.push(anthropic_error("rate_limit_error", "slow down"), status=429, headers={"retry-after": "7"})
    server.push(anthropic_tool_use("toolu_1", EDIT))
    server.push(anthropic_text("LR 0.04"))
    proposer(server, waits, max_delay=60).propose(context())
    assert waits.sleeps == [7.0]


def test_the_sdk_retries_first(server, waits):
    server.push(anthropic_error("api_error", "boom"), status=500, headers={"retry-after-ms": "1"})
    server.push(anthropic_tool_use("toolu_1", EDIT))
    server.push(anthropic_text("LR 0.04"))
    proposer(server, waits, sdk_max_retries=2).propose(context())
    assert waits.sleeps == [] and len(server.requests) == 3


def test_a_long_outage_is_waited_out_with_capped_backoff(server, waits):
    for _ in range(8):
        server.push(anthropic_error("overloaded_error", "Overloaded"), status=529)
    server.push(anthropic_tool_use("toolu_1", EDIT))
    server.push(anthropic_text("LR 0.04"))
    proposer(server, waits, base_delay=1.0, max_delay=4.0).propose(context())
    assert len(waits.sleeps) == 8
    assert all(0.5 <= s <= 4.0 for s in waits.sleeps)
    assert all(2.0 <= s for s in waits.sleeps[3:])  # at the cap (with jitter) from the 4th wait


@pytest.mark.parametrize(
    "status,kind,text,hint",
    [(401, "authentication_error", "invalid x-api-key", "ANTHROPIC_API_KEY"), (400, "invalid_request_error", "max_tokens: too large", "")],
)
def test_errors_that_will_not_fix_themselves_raise_ar_error(server, waits, status, kind, text, hint):
    server.push(anthropic_error(kind, text), status=status)
    with pytest.raises(ArError) as err:
        proposer(server, waits).propose(context())
    assert not isinstance(err.value, NoProposal)
    assert str(status) in str(err.value) and text in str(err.value) and hint in str(err.value)
    assert len(server.requests) == 1 and waits.sleeps == []


# -- registry ---------------------------------------------------------------------------


def test_default_is_anthropic_only_with_a_key(monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    assert default_proposer_name() == "optuna"
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-x")
    assert default_proposer_name() == "anthropic"


def test_unknown_proposer_lists_the_names():
    with pytest.raises(ArError, match="anthropic, openai, optuna, offline"):
        get_proposer("gpt")


def test_anthropic_without_a_key_says_to_set_it(monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_AUTH_TOKEN", raising=False)
    with pytest.raises(ArError, match="set ANTHROPIC_API_KEY"):
        get_proposer("anthropic")


def test_anthropic_without_the_sdk_says_how_to_install_it(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-x")
    monkeypatch.setitem(sys.modules, "anthropic", None)  # makes `import anthropic` fail
    with pytest.raises(ArError, match="pip install anthropic"):
        get_proposer("anthropic")


def test_get_proposer_passes_model_and_base_url(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-x")
    p = get_proposer("Anthropic", model="claude-opus-5-5", base_url="http://127.0.0.1:9", max_turns=3)
    assert (p.name, p.model, p.max_turns) == ("anthropic", "claude-opus-5-5", 3)
    assert str(p.client.base_url).startswith("http://127.0.0.1:9")
    assert get_proposer(None).model == DEFAULT_MODEL


def test_offline_is_available_by_name():
    pytest.importorskip("autoresearch.proposers.offline")
    assert get_proposer("offline").name == "offline"


# -- pricing ----------------------------------------------------------------------------


def test_pricing_matches_families_and_flags_unknown_models():
    assert price_of("claude-sonnet-5-5-20260928") == price_of("claude-sonnet-5-5")
    assert price_of("claude-opus-4-20250514").input == 15.0
    assert price_of("claude-fable-5-2") is None  # another minor version: not guessed
    u = Usage(input_tokens=1_000_000, output_tokens=1_000_000, cache_read_tokens=1_000_000, cache_write_tokens=1_000_000)
    assert cost_usd("claude-haiku-4-5-20251001", u) == (pytest.approx(1 + 5 + 0.1 + 1.25), True)
    assert cost_usd("qwen3-coder:30b", u) == (0.0, False)
    assert AnthropicProposer("my-proxy-model", client=object()).cost_known is False
