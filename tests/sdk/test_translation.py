"""The same OpenAI SDK calls, translated by the gateway to the Anthropic and Gemini wires.

The mock answers every wire with the same deterministic text, so each test expects exactly
what the OpenAI-wire tests expect, and then checks the native request the mock recorded: the
path, the provider's own key header, and the translated body.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pytest

from support import (
    PROVIDER_KEY,
    WEATHER_TOOL,
    assert_no_master_key,
    assert_unit_vector,
    expected_answer,
    expected_tool_answer,
    word_count,
)

PROMPT = "hello there"
SYSTEM = "be brief"


@dataclass(frozen=True)
class Native:
    """One translated provider, as the gateway config names it and as the mock sees it."""

    provider: str
    upstream_model: str

    @property
    def model(self) -> str:
        """What the client asks for: `provider/model` goes straight to that provider."""
        return f"{self.provider}/{self.upstream_model}"

    def assert_chat_request(self, request: dict, stream: bool) -> None:
        """The native path, method and key headers of one chat request."""
        assert request["method"] == "POST"
        headers = request["headers"]
        if self.provider == "anthropic":
            assert request["path"] == "/v1/messages"
            assert headers.get("x-api-key") == PROVIDER_KEY
            assert headers.get("anthropic-version"), "anthropic-version header missing"
            assert request["body"]["model"] == self.upstream_model
            assert request["body"].get("stream", False) is stream
            assert isinstance(request["body"]["max_tokens"], int)
        else:
            action = "streamGenerateContent" if stream else "generateContent"
            assert request["path"] == f"/v1beta/models/{self.upstream_model}:{action}"
            assert headers.get("x-goog-api-key") == PROVIDER_KEY
            if stream:
                assert "alt=sse" in (request["query"] or "").split("&"), request["query"]
        assert_no_master_key([request])

    def user_texts(self, body: dict) -> list[str]:
        """The user texts the translated body carries, in order."""
        texts = []
        if self.provider == "anthropic":
            for message in body["messages"]:
                if message["role"] != "user":
                    continue
                content = message["content"]
                if isinstance(content, str):
                    texts.append(content)
                else:
                    texts.extend(block["text"] for block in content if block["type"] == "text")
        else:
            for content in body["contents"]:
                if content.get("role", "user") == "user":
                    texts.extend(part["text"] for part in content["parts"] if "text" in part)
        return texts

    def system_text(self, body: dict) -> str:
        """The system prompt the translated body carries."""
        if self.provider == "anthropic":
            system = body.get("system", "")
            assert all(message["role"] != "system" for message in body["messages"])
            if isinstance(system, str):
                return system
            return "".join(block["text"] for block in system)
        instruction = body.get("systemInstruction") or {}
        return "".join(part.get("text", "") for part in instruction.get("parts", []))

    def declared_tool_names(self, body: dict) -> list[str]:
        if self.provider == "anthropic":
            return [tool["name"] for tool in body["tools"]]
        return [
            declaration["name"]
            for tool in body["tools"]
            for declaration in tool.get("functionDeclarations", [])
        ]


ANTHROPIC = Native("anthropic", "claude-x")
GEMINI = Native("gemini", "gemini-x")
NATIVES = pytest.mark.parametrize("native", [ANTHROPIC, GEMINI], ids=lambda n: n.provider)


@NATIVES
def test_chat(client, mock, native):
    raw = client.chat.completions.with_raw_response.create(
        model=native.model,
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": PROMPT}],
    )
    completion = raw.parse()

    assert raw.headers["x-switchyard-provider"] == native.provider
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == expected_answer(PROMPT)
    assert choice.finish_reason == "stop"
    assert completion.usage.prompt_tokens == word_count(SYSTEM) + word_count(PROMPT)
    assert completion.usage.completion_tokens == word_count(expected_answer(PROMPT))
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )

    upstream = mock.only_request()
    native.assert_chat_request(upstream, stream=False)
    assert native.user_texts(upstream["body"]) == [PROMPT]
    assert native.system_text(upstream["body"]) == SYSTEM


@NATIVES
def test_stream(client, mock, native):
    chunks = list(
        client.chat.completions.create(
            model=native.model, messages=[{"role": "user", "content": PROMPT}], stream=True
        )
    )

    assert chunks, "the stream was empty"
    assert all(chunk.usage is None for chunk in chunks), "usage was not asked for"
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == expected_answer(PROMPT)
    finish_reasons = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices]
    assert finish_reasons[-1] == "stop"
    assert all(reason is None for reason in finish_reasons[:-1])
    assert len({chunk.id for chunk in chunks}) == 1, "every chunk of one stream shares its id"

    native.assert_chat_request(mock.only_request(), stream=True)


@NATIVES
def test_stream_with_include_usage(client, mock, native):
    chunks = list(
        client.chat.completions.create(
            model=native.model,
            messages=[{"role": "user", "content": PROMPT}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )

    final = chunks[-1]
    assert final.choices == []
    assert final.usage is not None
    assert final.usage.prompt_tokens == word_count(PROMPT)
    assert final.usage.completion_tokens == word_count(expected_answer(PROMPT))
    assert all(chunk.usage is None for chunk in chunks[:-1])
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks[:-1])
    assert text == expected_answer(PROMPT)


@NATIVES
def test_tool_call_and_tool_result_round_trip(client, mock, native):
    question = "weather in Paris"
    messages = [{"role": "user", "content": question}]
    first = client.chat.completions.create(
        model=native.model, messages=messages, tools=[WEATHER_TOOL]
    )

    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None and len(choice.message.tool_calls) == 1
    call = choice.message.tool_calls[0]
    assert call.id
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"input": question}
    upstream = mock.only_request()
    native.assert_chat_request(upstream, stream=False)
    assert native.declared_tool_names(upstream["body"]) == ["get_weather"]

    mock.reset()
    messages.append(choice.message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "sunny"})
    second = client.chat.completions.create(
        model=native.model, messages=messages, tools=[WEATHER_TOOL]
    )

    assert second.choices[0].message.content == expected_tool_answer("sunny")
    assert second.choices[0].finish_reason == "stop"
    upstream = mock.only_request()
    native.assert_chat_request(upstream, stream=False)
    body = upstream["body"]
    if native.provider == "anthropic":
        # The tool call goes back as a tool_use block, its result as a tool_result with the id.
        tool_use = [
            block
            for message in body["messages"]
            if message["role"] == "assistant" and isinstance(message["content"], list)
            for block in message["content"]
            if block["type"] == "tool_use"
        ]
        assert [(block["id"], block["name"], block["input"]) for block in tool_use] == [
            (call.id, "get_weather", {"input": question})
        ]
        results = [
            block
            for message in body["messages"]
            if message["role"] == "user" and isinstance(message["content"], list)
            for block in message["content"]
            if block["type"] == "tool_result"
        ]
        assert [block["tool_use_id"] for block in results] == [call.id]
    else:
        # Gemini has no call ids: the result must name the function that was called.
        calls = [
            part["functionCall"]
            for content in body["contents"]
            for part in content["parts"]
            if "functionCall" in part
        ]
        assert calls == [{"name": "get_weather", "args": {"input": question}}]
        responses = [
            part["functionResponse"]
            for content in body["contents"]
            for part in content["parts"]
            if "functionResponse" in part
        ]
        assert [response["name"] for response in responses] == ["get_weather"]


@NATIVES
def test_streamed_tool_call(client, mock, native):
    question = "weather in Rome"
    chunks = list(
        client.chat.completions.create(
            model=native.model,
            messages=[{"role": "user", "content": question}],
            tools=[WEATHER_TOOL],
            stream=True,
        )
    )

    ids, names, arguments = set(), [], ""
    for chunk in chunks:
        for choice in chunk.choices:
            for tool_call in choice.delta.tool_calls or []:
                assert tool_call.index == 0
                if tool_call.id:
                    ids.add(tool_call.id)
                if tool_call.function and tool_call.function.name:
                    names.append(tool_call.function.name)
                if tool_call.function and tool_call.function.arguments:
                    arguments += tool_call.function.arguments
    assert len(ids) == 1, f"one tool call id expected, got {ids}"
    assert names == ["get_weather"], "the name comes once, in the first delta of the call"
    assert json.loads(arguments) == {"input": question}
    finish_reasons = [choice.finish_reason for chunk in chunks for choice in chunk.choices]
    assert finish_reasons[-1] == "tool_calls"
    native.assert_chat_request(mock.only_request(), stream=True)


def test_gemini_embeddings(client, mock):
    text = "hello world"
    decoded = client.embeddings.create(model="gemini/text-embedding-x", input=text)
    upstream = mock.only_request()
    floats = client.embeddings.create(
        model="gemini/text-embedding-x", input=[text, "goodbye"], encoding_format="float"
    )
    # The mock derives a vector from the text alone, whichever wire asked for it.
    reference = client.embeddings.create(model="mock-embed", input=text, encoding_format="float")

    assert_unit_vector(decoded.data[0].embedding)
    assert [item.index for item in floats.data] == [0, 1]
    for item in floats.data:
        assert_unit_vector(item.embedding)
    for vector in (decoded.data[0].embedding, floats.data[0].embedding):
        for ours, theirs in zip(vector, reference.data[0].embedding, strict=True):
            assert math.isclose(ours, theirs, rel_tol=1e-6, abs_tol=1e-7)

    assert upstream["path"] in (
        "/v1beta/models/text-embedding-x:batchEmbedContents",
        "/v1beta/models/text-embedding-x:embedContent",
    )
    assert upstream["headers"].get("x-goog-api-key") == PROVIDER_KEY
    assert_no_master_key(mock.requests())

