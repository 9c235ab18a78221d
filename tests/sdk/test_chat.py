"""Chat completions through the `smart` route to the OpenAI-wire provider."""

from __future__ import annotations

import json

from support import (
    PROVIDER_KEY,
    WEATHER_TOOL,
    assert_no_master_key,
    expected_answer,
    expected_tool_answer,
    word_count,
)

PROMPT = "hello there"


def test_chat_answers_with_the_provider_text_usage_and_headers(client, mock):
    raw = client.chat.completions.with_raw_response.create(
        model="smart", messages=[{"role": "user", "content": PROMPT}]
    )
    completion = raw.parse()

    assert raw.headers["x-switchyard-provider"] == "openai"
    assert raw.headers["x-switchyard-model"] == "mock-large"
    assert raw.headers.get("x-request-id"), "every response carries a request id"
    assert completion.object == "chat.completion"
    assert len(completion.choices) == 1
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == expected_answer(PROMPT)
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == word_count(PROMPT)
    assert completion.usage.completion_tokens == word_count(expected_answer(PROMPT))
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )

    upstream = mock.only_request()
    assert upstream["path"] == "/v1/chat/completions"
    assert upstream["body"]["model"] == "mock-large", "the route must name its target's model"
    assert upstream["body"]["messages"] == [{"role": "user", "content": PROMPT}]


def test_the_client_key_never_reaches_the_provider(client, mock):
    client.chat.completions.create(model="smart", messages=[{"role": "user", "content": "hi"}])

    upstream = mock.only_request()
    assert upstream["headers"]["authorization"] == f"Bearer {PROVIDER_KEY}"
    assert_no_master_key([upstream])


def test_client_request_id_is_echoed(client):
    raw = client.chat.completions.with_raw_response.create(
        model="smart",
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={"x-request-id": "sdk-test-request-1"},
    )

    assert raw.headers["x-request-id"] == "sdk-test-request-1"


def test_bare_model_matches_the_provider_pattern(client, mock):
    raw = client.chat.completions.with_raw_response.create(
        model="mock-small", messages=[{"role": "user", "content": PROMPT}]
    )

    assert raw.parse().choices[0].message.content == expected_answer(PROMPT)
    assert raw.headers["x-switchyard-provider"] == "openai"
    assert mock.only_request()["body"]["model"] == "mock-small"


def test_stream_deltas_concatenate_to_the_answer(client, mock):
    stream = client.chat.completions.create(
        model="smart", messages=[{"role": "user", "content": PROMPT}], stream=True
    )
    chunks = list(stream)

    assert chunks, "the stream was empty"
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert all(chunk.usage is None for chunk in chunks), "usage was not asked for"
    assert all(len(chunk.choices) == 1 for chunk in chunks)
    deltas = [chunk.choices[0].delta.content for chunk in chunks if chunk.choices[0].delta.content]
    assert "".join(deltas) == expected_answer(PROMPT)
    assert len(deltas) > 1, "the answer should arrive in several deltas, as the provider sent it"
    finish_reasons = [chunk.choices[0].finish_reason for chunk in chunks]
    assert finish_reasons[-1] == "stop"
    assert all(reason is None for reason in finish_reasons[:-1])
    assert mock.only_request()["body"]["stream"] is True


def test_stream_with_include_usage_ends_with_a_usage_chunk(client, mock):
    stream = client.chat.completions.create(
        model="smart",
        messages=[{"role": "user", "content": PROMPT}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)

    final = chunks[-1]
    assert final.choices == []
    assert final.usage is not None
    assert final.usage.prompt_tokens == word_count(PROMPT)
    assert final.usage.completion_tokens == word_count(expected_answer(PROMPT))
    assert final.usage.total_tokens == final.usage.prompt_tokens + final.usage.completion_tokens
    assert all(chunk.usage is None for chunk in chunks[:-1])
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks[:-1])
    assert text == expected_answer(PROMPT)
    assert [c.choices[0].finish_reason for c in chunks[:-1]][-1] == "stop"


def test_tool_call_and_tool_result_round_trip(client, mock):
    question = "weather in Paris"
    messages = [{"role": "user", "content": question}]
    first = client.chat.completions.create(model="smart", messages=messages, tools=[WEATHER_TOOL])

    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None and len(choice.message.tool_calls) == 1
    call = choice.message.tool_calls[0]
    assert call.type == "function"
    assert call.id
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"input": question}
    assert mock.only_request()["body"]["tools"] == [WEATHER_TOOL]

    mock.reset()
    messages.append(choice.message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "sunny, 21C"})
    second = client.chat.completions.create(model="smart", messages=messages, tools=[WEATHER_TOOL])

    assert second.choices[0].message.content == expected_tool_answer("sunny, 21C")
    assert second.choices[0].finish_reason == "stop"
    sent = mock.only_request()["body"]["messages"]
    assert sent[1]["tool_calls"][0]["id"] == call.id
    assert sent[2] == {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21C"}


def test_forced_tool_choice_is_honoured(client, mock):
    other_tool = {
        "type": "function",
        "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
    }
    completion = client.chat.completions.create(
        model="smart",
        messages=[{"role": "user", "content": "what time"}],
        tools=[WEATHER_TOOL, other_tool],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )

    assert completion.choices[0].message.tool_calls[0].function.name == "get_time"
    assert mock.only_request()["body"]["tool_choice"] == {
        "type": "function",
        "function": {"name": "get_time"},
    }


def test_json_object_response_format_passes_through(client, mock):
    completion = client.chat.completions.create(
        model="smart",
        messages=[{"role": "user", "content": "reply in JSON"}],
        response_format={"type": "json_object"},
    )

    assert completion.choices[0].message.content == expected_answer("reply in JSON")
    assert mock.only_request()["body"]["response_format"] == {"type": "json_object"}
