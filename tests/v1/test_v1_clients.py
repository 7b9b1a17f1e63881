"""Third-party clients against ``cloudide/v1``: litellm (``openai/<id>`` with ``api_base``) and
langchain-openai's ``ChatOpenAI(base_url=...)`` with ``bind_tools``, through an API key."""

from __future__ import annotations

from typing import Any

import pytest
from fake_upstream import FakeUpstream, ToolCall, Turn
from v1_testing import ledger_rows, make_key

pytestmark = [
    pytest.mark.timeout(120),
    # litellm's own types trip pydantic's warnings: not ours to fix
    pytest.mark.filterwarnings("ignore:Items? .* using the `ReadOnly` qualifier:UserWarning"),
    pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecatedSince211"),
]

litellm = pytest.importorskip("litellm")
langchain_openai = pytest.importorskip("langchain_openai")


async def test_litellm_streaming_and_not(cloudide: Any, v1_url: str,
                                         upstream: FakeUpstream) -> None:
    key = await make_key(cloudide, cloudide._owner_name, models=("gpt-*",))
    upstream.script(Turn(text="Plain answer.", usage=(11, 3)),
                    Turn(text="Streamed answer, in pieces.", chunk_size=6, usage=(12, 6)))
    answer = await litellm.acompletion(model="openai/gpt-4o-mini", api_base=v1_url,
                                       api_key=key, messages=[{"role": "user", "content": "a"}])
    assert answer.choices[0].message.content == "Plain answer."
    assert answer.usage.prompt_tokens == 11 and answer.usage.completion_tokens == 3
    stream = await litellm.acompletion(model="openai/gpt-4o-mini", api_base=v1_url,
                                       api_key=key, stream=True,
                                       stream_options={"include_usage": True},
                                       messages=[{"role": "user", "content": "b"}])
    parts = [chunk.choices[0].delta.content or "" async for chunk in stream
             if chunk.choices]
    assert "".join(parts) == "Streamed answer, in pieces."
    rows = await ledger_rows(cloudide, cloudide._owner_name, count=2)
    assert [(r.input_tokens, r.output_tokens) for r in rows[-2:]] == [(11, 3), (12, 6)]


async def test_langchain_chat_openai_with_bind_tools(cloudide: Any, v1_url: str,
                                                     upstream: FakeUpstream) -> None:
    from langchain_core.tools import tool

    @tool
    def churn_rate(quarter: str) -> float:
        """The customer churn rate of a quarter."""
        return 0.042

    key = await make_key(cloudide, cloudide._owner_name)
    llm = langchain_openai.ChatOpenAI(model="gpt-4o-mini", base_url=v1_url, api_key=key,
                                      max_retries=0, timeout=30)
    upstream.script(Turn(tool_calls=[ToolCall("churn_rate", {"quarter": "Q3"})]))
    message = await llm.bind_tools([churn_rate]).ainvoke("What was churn in Q3?")
    assert message.tool_calls[0]["name"] == "churn_rate"
    assert message.tool_calls[0]["args"] == {"quarter": "Q3"}
    sent = upstream.requests[-1]["body"]
    assert sent["tools"][0]["function"]["name"] == "churn_rate"
    # streaming, and the tool's result sent back as a ToolMessage
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

    upstream.script(Turn(text="Churn was 4.2% in Q3.", chunk_size=5))
    history = [HumanMessage("What was churn in Q3?"),
               AIMessage("", tool_calls=message.tool_calls),
               ToolMessage("0.042", tool_call_id=message.tool_calls[0]["id"])]
    pieces = [chunk.content async for chunk in llm.bind_tools([churn_rate]).astream(history)]
    assert "".join(str(p) for p in pieces) == "Churn was 4.2% in Q3."
    tool_message = upstream.requests[-1]["body"]["messages"][-1]
    assert tool_message == {"role": "tool", "tool_call_id": message.tool_calls[0]["id"],
                            "content": "0.042"}
