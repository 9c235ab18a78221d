"""Constants and helpers the SDK tests share with their fixtures."""

from __future__ import annotations

import math

# What clients present to the gateway. It must never reach a provider.
MASTER_KEY = "sk-switchyard-sdk-master"
# What the gateway must present to the provider (the same key for all three wires, since one
# mock process checks them all).
PROVIDER_KEY = "sk-mock-provider-key"
# Appears in every mock answer: "sdkmock says: ...".
MOCK_NAME = "sdkmock"
# Per-request client timeout: a hung gateway fails one test instead of stalling the suite.
CLIENT_TIMEOUT_S = 10.0
# The mock's embedding length when the request does not ask for one.
MOCK_EMBEDDING_DIMENSIONS = 8


def expected_answer(prompt: str) -> str:
    """The mock's deterministic text answer when the last user message is `prompt`."""
    return f"{MOCK_NAME} says: {prompt}"


def expected_tool_answer(result: str) -> str:
    """The mock's answer when the conversation ends with a tool result `result`."""
    return f"{MOCK_NAME} got tool result: {result}"


def word_count(text: str) -> int:
    """The mock counts tokens as whitespace-separated words."""
    return len(text.split())


def assert_unit_vector(vector: list[float], dimensions: int = MOCK_EMBEDDING_DIMENSIONS) -> None:
    """The mock's embeddings are finite unit vectors of a known length."""
    assert len(vector) == dimensions, vector
    assert all(isinstance(value, float) and math.isfinite(value) for value in vector), vector
    assert math.isclose(math.sqrt(sum(value * value for value in vector)), 1.0, rel_tol=1e-4)


def assert_no_master_key(recorded: list[dict]) -> None:
    """The client's key appears nowhere in what the provider received."""
    for request in recorded:
        for name, value in request["headers"].items():
            assert MASTER_KEY not in value, f"client key leaked upstream in header {name}"
        assert MASTER_KEY not in (request.get("query") or ""), "client key leaked in the query"


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"input": {"type": "string"}},
            "required": ["input"],
        },
    },
}
