"""The response cache through the SDK: an answer stored from one kind of request (JSON or
stream) is served to the other, and the SDK parses both; per-request headers pass through
`extra_headers`."""

from __future__ import annotations

import uuid

from openai import OpenAI

from support import expected_answer


def unique(prompt: str) -> str:
    """The session's gateway keeps its cache across tests: every test asks its own questions."""
    return f"{prompt} {uuid.uuid4().hex[:8]}"


def ask(client: OpenAI, prompt: str, **extra):
    raw = client.chat.completions.with_raw_response.create(
        model="cached", messages=[{"role": "user", "content": prompt}], **extra
    )
    return raw.headers.get("x-switchyard-cache"), raw


def test_a_json_answer_is_replayed_as_a_stream_the_sdk_reads(client, mock):
    prompt = unique("cache me")
    status, raw = ask(client, prompt)
    assert status == "MISS"
    answer = raw.parse()
    assert answer.choices[0].message.content == expected_answer(prompt)

    status, raw = ask(client, prompt, stream=True, stream_options={"include_usage": True})
    assert status == "HIT"
    assert raw.headers.get("age") is not None
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected_answer(prompt)
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == answer.usage.completion_tokens
    assert mock.calls() == 1


def test_a_streamed_answer_is_served_as_json(client, mock):
    prompt = unique("stream first")
    status, raw = ask(client, prompt, stream=True)
    assert status == "MISS"
    streamed = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)

    status, raw = ask(client, prompt)
    assert status == "HIT"
    answer = raw.parse()
    assert answer.choices[0].message.content == streamed == expected_answer(prompt)
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage.prompt_tokens > 0
    assert mock.calls() == 1


def test_per_request_headers(client, mock):
    prompt = unique("headers")
    assert ask(client, prompt)[0] == "MISS"
    assert ask(client, prompt, extra_headers={"x-switchyard-cache": "no-cache"})[0] == "BYPASS"
    assert ask(client, prompt, extra_headers={"x-switchyard-cache": "refresh"})[0] == "REFRESH"
    assert ask(client, prompt)[0] == "HIT"
    assert mock.calls() == 3
