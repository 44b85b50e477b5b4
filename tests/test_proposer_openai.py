"""The OpenAI-compatible proposer, driving the real openai SDK against a local fake
server; what the prompt shows the model and how its description is read."""

from __future__ import annotations

import sys

import pytest
from fake_llm_server import FakeLLMServer, openai_completion, openai_error, openai_text, openai_tool_call

from autoresearch.errors import ArError
from autoresearch.proposers.base import HistoryItem, NoProposal, ProposalContext
from autoresearch.proposers import get_proposer
from autoresearch.proposers.common import RetryPolicy
from autoresearch.proposers.openai import OpenAIProposer
from autoresearch.proposers.prompt import format_history, parse_description, system_prompt, user_prompt

TRAIN = "import math\n\nLR = 0.02\nDEPTH = 8\n\n\ndef main():\n    print(LR * DEPTH)\n"
PROGRAM = "# autoresearch\nGet the lowest val_bpb by editing train.py."
EDIT = {"command": "str_replace", "path": "train.py", "old_str": "LR = 0.02", "new_str": "LR = 0.04"}


def context(**kw) -> ProposalContext:
    base = dict(
        program=PROGRAM,
        editable_name="train.py",
        editable_text=TRAIN,
        history=(HistoryItem(1, "a1b2c3d4e5", 1.2345, "keep", "baseline"),),
        best=1.2345,
        hardware="RTX 4090, cuda, 24 GB",
        profile="datacenter: seq 2048, budget 300 s",
    )
    base.update(kw)
    return ProposalContext(**base)


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with FakeLLMServer() as s:
        yield s


@pytest.fixture
def sleeps():
    return []


def proposer(server, sleeps, *, sdk_max_retries=0, max_delay=0.05, **kw) -> OpenAIProposer:
    policy = RetryPolicy(sdk_max_retries=sdk_max_retries, base_delay=0.01, max_delay=max_delay, sleep=sleeps.append)
    return OpenAIProposer("qwen3-coder", base_url=server.url + "/v1", retry=policy, **kw)


def usage(prompt=100, completion=20, cached=None) -> dict:
    u = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    if cached is not None:
        u["prompt_tokens_details"] = {"cached_tokens": cached}
    return u


# -- scenarios --------------------------------------------------------------------------


def test_a_good_edit_through_a_local_server_without_a_key(server, sleeps, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    server.push(openai_tool_call("call_1", EDIT, usage=usage(100, 30)))
    server.push(openai_text("Raise LR to 0.04\n\nShould converge faster.", usage(150, 10, cached=100)))
    p = proposer(server, sleeps).propose(context())

    assert p.new_text == TRAIN.replace("LR = 0.02", "LR = 0.04")
    assert p.description == "Raise LR to 0.04"
    # cached tokens are part of prompt_tokens: counted once, as cache reads
    assert (p.usage.input_tokens, p.usage.cache_read_tokens, p.usage.output_tokens) == (150, 100, 40)
    assert p.usage.cost_usd == 0.0  # a local model has no price

    first, second = (r.body for r in server.requests)
    assert server.requests[0].path == "/v1/chat/completions"
    assert first["model"] == "qwen3-coder"
    tool = first["tools"][0]
    assert tool["type"] == "function" and tool["function"]["name"] == "str_replace_based_edit_tool"
    params = tool["function"]["parameters"]
    assert params["required"] == ["command", "path"]
    assert params["properties"]["command"]["enum"] == ["view", "str_replace", "insert", "create"]
    assert [m["role"] for m in first["messages"]] == ["system", "user"]
    assert PROGRAM in first["messages"][0]["content"] and "LR = 0.02" in first["messages"][1]["content"]
    assert second["messages"][2]["tool_calls"][0]["id"] == "call_1"
    result = second["messages"][3]
    assert result["role"] == "tool" and result["tool_call_id"] == "call_1"
    assert result["content"].startswith("train.py has been edited")


def test_an_edit_that_does_not_match_gets_a_hint_and_can_be_corrected(server, sleeps):
    server.push(openai_tool_call("call_1", {**EDIT, "old_str": "LR=0.02"}))
    server.push(openai_tool_call("call_2", EDIT))
    server.push(openai_text("LR 0.04"))
    p = proposer(server, sleeps).propose(context())
    assert "LR = 0.04" in p.new_text
    failed = server.requests[1].body["messages"][-1]
    assert failed["content"].startswith("Error:") and "Did you mean" in failed["content"] and "LR = 0.02" in failed["content"]


def test_an_edit_of_another_path_is_refused_and_the_file_is_unchanged(server, sleeps):
    server.push(openai_tool_call("call_1", {"command": "create", "path": "../prepare.py", "file_text": "x = 1\n"}))
    server.push(openai_tool_call("call_2", {"command": "str_replace", "path": ".git/config", "old_str": "a", "new_str": "b"}))
    server.push(openai_text("done"))
    with pytest.raises(NoProposal) as err:
        proposer(server, sleeps, max_turns=3).propose(context())
    for i in (1, 2):
        refused = server.requests[i].body["messages"][-1]
        assert refused["content"].startswith("Error:") and "'train.py'" in refused["content"]
    assert err.value.usage.input_tokens == 300


def test_unparseable_arguments_come_back_as_an_error(server, sleeps):
    server.push(openai_tool_call("call_1", '{"command": "view", "path": '))
    server.push(openai_tool_call("call_2", EDIT, name="bash"))
    server.push(openai_tool_call("call_3", EDIT))
    server.push(openai_text("LR 0.04"))
    p = proposer(server, sleeps).propose(context())
    assert "not valid JSON" in server.requests[1].body["messages"][-1]["content"]
    assert "unknown tool 'bash'" in server.requests[2].body["messages"][-1]["content"]
    assert p.description == "LR 0.04"


def test_a_reply_with_no_edit_ends_in_no_proposal_after_the_turn_budget(server, sleeps):
    for _ in range(3):
        server.push(openai_text("Maybe try a bigger model?"))
    with pytest.raises(NoProposal) as err:
        proposer(server, sleeps, max_turns=3).propose(context())
    assert len(server.requests) == 3
    assert "not changed train.py" in server.requests[1].body["messages"][-1]["content"]
    assert (err.value.usage.input_tokens, err.value.usage.output_tokens) == (300, 60)


@pytest.mark.parametrize("status", [500, 503])
def test_server_errors_are_retried(server, sleeps, status):
    server.push(openai_error("model is loading"), status=status)
    server.push(openai_tool_call("call_1", EDIT))
    server.push(openai_text("LR 0.04"))
    assert proposer(server, sleeps).propose(context()).description == "LR 0.04"
    assert len(sleeps) == 1


def test_rate_limit_retry_after_is_honoured(server, sleeps):
    server.push(openai_error("Rate limit reached", "rate_limit"), status=429, headers={"retry-after": "3"})
    server.push(openai_tool_call("call_1", EDIT))
    server.push(openai_text("LR 0.04"))
    proposer(server, sleeps, max_delay=60).propose(context())
    assert sleeps == [3.0]


def test_a_401_is_an_ar_error_without_retrying(server, sleeps):
    server.push(openai_error("Incorrect API key provided", "invalid_request_error"), status=401)
    with pytest.raises(ArError, match="401.*Incorrect API key provided.*OPENAI_API_KEY"):
        proposer(server, sleeps).propose(context())
    assert len(server.requests) == 1 and sleeps == []


def test_a_response_without_usage_counts_zero(server, sleeps):
    body = openai_tool_call("call_1", EDIT)
    del body["usage"]  # some local servers omit it
    server.push(body)
    server.push(openai_completion({"content": "LR 0.04"}))
    p = proposer(server, sleeps).propose(context())
    assert p.usage.input_tokens == 100  # only the second turn reported usage


# -- registry ---------------------------------------------------------------------------


def test_openai_needs_a_model():
    with pytest.raises(ArError, match="--model"):
        get_proposer("openai", base_url="http://127.0.0.1:9/v1")


def test_openai_needs_a_key_or_a_base_url(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ArError, match="OPENAI_API_KEY.*--base-url"):
        get_proposer("openai", model="gpt-x")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    p = get_proposer("openai", model="llama", max_turns=4)
    assert (p.name, p.model, p.max_turns) == ("openai", "llama", 4)
    assert str(p.client.base_url).startswith("http://127.0.0.1:9/v1")


def test_openai_without_the_sdk_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "openai", None)
    with pytest.raises(ArError, match="pip install openai"):
        get_proposer("openai", model="llama", base_url="http://127.0.0.1:9/v1")


# -- the prompt -------------------------------------------------------------------------


def test_the_prompt_carries_everything_the_model_needs():
    ctx = context(
        history=(
            HistoryItem(1, "a1b2c3d", 1.2345, "keep", "baseline"),
            HistoryItem(2, "b2c3d4e", 0.0, "crash", "double depth"),
        ),
        last_crash_tail="RuntimeError: CUDA out of memory",
        feedback="the edit did not change the file",
        in_flight=("try GELU", "warmup 5%"),
    )
    system, user = system_prompt(ctx), user_prompt(ctx)
    assert PROGRAM in system and "train.py" in system and "str_replace_based_edit_tool" in system
    for needle in (
        "RTX 4090, cuda, 24 GB",
        "datacenter: seq 2048",
        "Best val_bpb so far: 1.234500",
        "1\ta1b2c3d\t1.234500\tkeep\tbaseline",
        "2\tb2c3d4e\t-\tcrash\tdouble depth",
        "(#2: double depth) crashed",
        "CUDA out of memory",
        "rejected before it ran\nthe edit did not change the file",
        "- try GELU\n- warmup 5%",
        "```python\n" + TRAIN.rstrip() + "\n```",
    ):
        assert needle in user, needle
    fresh = user_prompt(context(history=(), best=None))
    assert "none yet" in fresh and "crashed" not in fresh and "rejected" not in fresh and "Running" not in fresh


def test_a_long_history_keeps_the_kept_ones_and_the_last_30():
    items = tuple(
        HistoryItem(i, f"{i:07x}", 1.0 - i / 1000, "keep" if i % 20 == 1 else ("crash" if i % 7 == 0 else "discard"), f"idea {i}")
        for i in range(1, 101)
    )
    out = format_history(items)
    rows = [line.split("\t")[0] for line in out.splitlines()[2:]]
    kept_early = [str(i) for i in range(1, 71) if i % 20 == 1]
    assert rows == kept_early + [str(i) for i in range(71, 101)]
    hidden = [i for i in range(1, 71) if i % 20 != 1]
    crashes = sum(1 for i in hidden if i % 7 == 0)
    assert f"{len(hidden)} older experiments not shown: {crashes} crash, {len(hidden) - crashes} discard" in out
    short = format_history(items[:60])
    assert len(short.splitlines()) == 61 and "not shown" not in short


@pytest.mark.parametrize(
    "text,expected",
    [
        ("**Raise LR to 0.04**\nbecause", "Raise LR to 0.04"),
        ("\n\n## Use GELU  instead\tof ReLU", "Use GELU instead of ReLU"),
        ("Description: `wider MLP (4x -> 6x)`", "wider MLP (4x -> 6x)"),
        ("- \"shorter warmup\"", "shorter warmup"),
        ("   \n**\n", None),
        ("", None),
    ],
)
def test_the_description_is_the_first_line_without_markdown(text, expected):
    assert parse_description(text) == expected


def test_a_long_description_is_shortened():
    out = parse_description("x" * 500)
    assert len(out) == 160 and out.endswith("...")
