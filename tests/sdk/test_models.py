"""The model list a client discovers through the gateway."""

from __future__ import annotations

import openai
import pytest


def test_models_list_contains_the_route(client):
    models = list(client.models.list())

    ids = [model.id for model in models]
    assert "smart" in ids
    assert len(ids) == len(set(ids)), f"duplicate model ids: {ids}"
    assert all(model.object == "model" for model in models)


def test_models_retrieve_the_route(client):
    model = client.models.retrieve("smart")

    assert model.id == "smart"
    assert model.object == "model"


def test_models_retrieve_unknown_is_not_found(client):
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")
