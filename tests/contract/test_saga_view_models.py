"""The orders service's saga-view response models say what the contract's SagaView says."""

from __future__ import annotations

import dataclasses
import typing
import uuid
from typing import Any

import pytest
from pydantic import BaseModel

from services.orders.saga_view import CompensationOut, SagaStepOut, SagaViewOut
from services.orders.temporal_saga import not_started_view
from workflows import contract

PAIRS = [
    (contract.SagaView, SagaViewOut),
    (contract.StepState, SagaStepOut),
    (contract.CompensationState, CompensationOut),
]


def literal_values(annotation: Any) -> set[str] | None:
    if typing.get_origin(annotation) is typing.Literal:
        return set(typing.get_args(annotation))
    for arg in typing.get_args(annotation):
        found = literal_values(arg)
        if found is not None:
            return found
    return None


@pytest.mark.parametrize(("payload", "model"), PAIRS, ids=[m.__name__ for _, m in PAIRS])
def test_the_response_model_has_the_contracts_fields_and_vocabulary(
    payload: type[Any], model: type[BaseModel]
) -> None:
    hints = typing.get_type_hints(payload)
    fields = [f.name for f in dataclasses.fields(payload)]
    assert list(model.model_fields) == fields
    for name in fields:
        expected = literal_values(hints[name])
        if expected is not None:
            assert literal_values(model.model_fields[name].annotation) == expected, name


def test_the_view_of_a_saga_not_started_is_a_valid_response() -> None:
    order_id = uuid.uuid4()
    view = SagaViewOut.model_validate(not_started_view(order_id))
    assert view.workflow_id == contract.workflow_id_for(str(order_id))
    assert [step.name for step in view.steps] == list(contract.STEP_NAMES)
    assert {step.status for step in view.steps} == {"pending"}
