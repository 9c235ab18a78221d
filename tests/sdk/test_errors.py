"""Client-facing errors: each is OpenAI-shaped, so the SDK raises its typed exception."""

from __future__ import annotations

import openai
import pytest
from openai import OpenAI

from support import CLIENT_TIMEOUT_S, MASTER_KEY, expected_answer

HELLO = [{"role": "user", "content": "hello"}]


def assert_openai_error_body(error: openai.APIStatusError) -> None:
    """The SDK hands us the `error` object of `{"error": {"message", "type", ...}}`."""
    assert isinstance(error.body, dict), error.response.text
    assert isinstance(error.body.get("message"), str) and error.body["message"], error.body
    assert "type" in error.body, error.body
    assert error.request_id, "errors carry x-request-id too"


def test_wrong_key_is_rejected_before_any_provider_call(gateway, mock):
    with OpenAI(
        base_url=f"{gateway.url}/v1", api_key="sk-not-the-master-key", timeout=CLIENT_TIMEOUT_S
    ) as intruder:
        with pytest.raises(openai.AuthenticationError) as raised:
            intruder.chat.completions.create(model="smart", messages=HELLO)
        with pytest.raises(openai.AuthenticationError):
            intruder.embeddings.create(model="mock-embed", input="hello")
        with pytest.raises(openai.AuthenticationError):
            intruder.models.list()

    assert raised.value.status_code == 401
    assert_openai_error_body(raised.value)
    assert mock.calls() == 0


def test_unknown_model_is_not_found(client, mock):
    with pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(model="no-such-model", messages=HELLO)

    assert raised.value.status_code == 404
    assert_openai_error_body(raised.value)
    assert mock.calls() == 0


def test_invalid_role_is_a_bad_request(client, mock):
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(
            model="smart", messages=[{"role": "wizard", "content": "hello"}]
        )

    assert raised.value.status_code == 400
    assert_openai_error_body(raised.value)
    assert mock.calls() == 0


def test_missing_messages_is_a_bad_request(client, mock):
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model="smart", messages=[])

    assert raised.value.status_code == 400
    assert_openai_error_body(raised.value)


def test_provider_429_becomes_a_rate_limit_error(client, mock):
    # Every attempt the gateway makes gets a 429 (the route has one target).
    mock.set_behavior({"error_status": 429, "retry_after_s": 1})
    with pytest.raises(openai.RateLimitError) as raised:
        client.chat.completions.create(model="smart", messages=HELLO)

    assert raised.value.status_code == 429
    assert_openai_error_body(raised.value)
    assert raised.value.response.headers.get("retry-after") == "1", "the provider's pause"
    assert mock.calls() >= 1


def test_provider_429_on_a_stream_becomes_a_rate_limit_error(client, mock):
    mock.set_behavior({"error_status": 429})
    with pytest.raises(openai.RateLimitError):
        list(client.chat.completions.create(model="smart", messages=HELLO, stream=True))

    assert mock.calls() >= 1


def test_provider_500_becomes_a_server_error(client, mock):
    mock.set_behavior({"error_status": 500})
    with pytest.raises(openai.InternalServerError) as raised:
        client.chat.completions.create(model="smart", messages=HELLO)

    assert raised.value.status_code >= 500
    assert_openai_error_body(raised.value)


@pytest.mark.parametrize(
    ("model", "events_before_the_cut"),
    # Enough provider events for the answer's first words to have reached the client.
    [("smart", 3), ("anthropic/claude-x", 5), ("gemini/gemini-x", 2)],
    ids=["openai", "anthropic", "gemini"],
)
def test_stream_cut_by_the_provider_raises_after_a_prefix(
    client, mock, model, events_before_the_cut
):
    prompt = "one two three four"
    mock.script([{"reset_after_chunks": events_before_the_cut}])
    received = []
    # A stream the provider broke must not look like a complete answer.
    with pytest.raises(openai.APIError) as raised:
        for chunk in client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": prompt}], stream=True
        ):
            for choice in chunk.choices:
                assert choice.finish_reason is None, "a cut stream must not finish normally"
                received.append(choice.delta.content or "")

    text = "".join(received)
    assert text, "the words sent before the cut should have arrived"
    assert expected_answer(prompt).startswith(text)
    assert text != expected_answer(prompt)
    assert isinstance(raised.value.body, dict) and raised.value.body.get("message")


def test_rate_limit_is_a_rate_limit_error_with_openai_headers(gateway, mock):
    # No SDK retries: the point is what the SDK sees on the first refusal.
    with OpenAI(
        base_url=f"{gateway.url}/v1",
        api_key=MASTER_KEY,
        timeout=CLIENT_TIMEOUT_S,
        max_retries=0,
    ) as client:
        for remaining in ("1", "0"):
            raw = client.chat.completions.with_raw_response.create(model="limited", messages=HELLO)
            assert raw.headers["x-ratelimit-limit-requests"] == "2"
            assert raw.headers["x-ratelimit-remaining-requests"] == remaining
            assert raw.parse().choices[0].message.content
        with pytest.raises(openai.RateLimitError) as raised:
            client.chat.completions.create(model="limited", messages=HELLO)

    assert raised.value.status_code == 429
    assert_openai_error_body(raised.value)
    assert raised.value.code == "rate_limit_exceeded"
    headers = raised.value.response.headers
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert int(headers["retry-after"]) >= 1
    assert mock.calls() == 2
