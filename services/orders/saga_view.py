"""The saga view's response models, generated from the contract's dataclasses (workflows/contract.py).

Field names, defaults and the status vocabularies (Literals) are the workflow's own, so the API
cannot drift from what the `status` query returns; only a few fields are parsed into richer types
here (the order id, the step times), which is what the API documents.
"""

from __future__ import annotations

import dataclasses
import typing
import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field, create_model

from workflows import contract


def model_of(source: type[Any], model_name: str, /, **overrides: Any) -> type[BaseModel]:
    """A pydantic model with the dataclass `source`'s fields; `overrides` replace a field's type (or
    give `(type, Field(...))`). A field the dataclass requires but may be None defaults to None."""
    hints = typing.get_type_hints(source)
    fields: dict[str, Any] = {}
    for field in dataclasses.fields(source):
        annotation = overrides.get(field.name, hints[field.name])
        if isinstance(annotation, tuple):
            fields[field.name] = annotation
            continue
        if field.default is not dataclasses.MISSING:
            default = field.default
        else:
            default = None if type(None) in typing.get_args(annotation) else ...
        fields[field.name] = (annotation, default)
    model: type[BaseModel] = create_model(model_name, **fields)
    return model


_TRACE_ID = Field(
    default=None, description="The trace of the request that placed the order, when tracing is on."
)

_CompensationFields = model_of(contract.CompensationState, "CompensationFields")


# Subclasses, so that the models are types to the checker and keep their names in the OpenAPI
# document; their fields come from the dataclasses (a dynamic base is Any to mypy).
class CompensationOut(_CompensationFields):  # type: ignore[misc,valid-type]
    """A compensation's outcome: contract.CompensationState."""


_SagaStepFields = model_of(
    contract.StepState,
    "SagaStepFields",
    # Any name: the contract's STEP_NAMES today, and the older names of sagas still running.
    name=str,
    started_at=datetime | None,
    finished_at=datetime | None,
    compensation=CompensationOut | None,
)


class SagaStepOut(_SagaStepFields):  # type: ignore[misc,valid-type]
    """One step of the saga view: contract.StepState."""


_SagaViewFields = model_of(
    contract.SagaView,
    "SagaViewFields",
    order_id=uuid.UUID,
    steps=list[SagaStepOut],
    trace_id=(str | None, _TRACE_ID),
)


class SagaViewOut(_SagaViewFields):  # type: ignore[misc,valid-type]
    """The saga view: contract.SagaView, as the workflow's `status` query returns it."""
