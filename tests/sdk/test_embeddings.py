"""Embeddings through the OpenAI-wire provider, in both encodings the SDK knows."""

from __future__ import annotations

import array
import base64
import math

from support import assert_unit_vector


def test_default_encoding_decodes_to_a_vector(client, mock):
    # The SDK asks for base64 unless told otherwise, and decodes it to floats.
    response = client.embeddings.create(model="mock-embed", input="hello world")

    assert len(response.data) == 1
    assert response.data[0].index == 0
    assert_unit_vector(response.data[0].embedding)
    assert response.usage.prompt_tokens == 2
    upstream = mock.only_request()
    assert upstream["path"] == "/v1/embeddings"
    assert upstream["body"]["model"] == "mock-embed"


def test_float_encoding_returns_the_same_vectors(client):
    decoded = client.embeddings.create(model="mock-embed", input="hello world")
    floats = client.embeddings.create(
        model="mock-embed", input=["hello world", "goodbye"], encoding_format="float"
    )

    assert [item.index for item in floats.data] == [0, 1]
    for item in floats.data:
        assert_unit_vector(item.embedding)
    assert floats.data[0].embedding != floats.data[1].embedding
    for ours, theirs in zip(floats.data[0].embedding, decoded.data[0].embedding, strict=True):
        assert math.isclose(ours, theirs, rel_tol=1e-6, abs_tol=1e-7)


def test_explicit_base64_is_a_string_of_little_endian_floats(client):
    encoded = client.embeddings.create(
        model="mock-embed", input="hello world", encoding_format="base64"
    )
    floats = client.embeddings.create(
        model="mock-embed", input="hello world", encoding_format="float"
    )

    assert isinstance(encoded.data[0].embedding, str)
    values = array.array("f", base64.b64decode(encoded.data[0].embedding)).tolist()
    for ours, theirs in zip(values, floats.data[0].embedding, strict=True):
        assert math.isclose(ours, theirs, rel_tol=1e-6, abs_tol=1e-7)


def test_dimensions_pass_through(client, mock):
    response = client.embeddings.create(
        model="mock-embed", input="hello", dimensions=3, encoding_format="float"
    )

    assert_unit_vector(response.data[0].embedding, dimensions=3)
    assert mock.only_request()["body"]["dimensions"] == 3
