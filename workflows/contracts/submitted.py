"""What a workflow receives from outside: its start input and update payloads, decoded leniently
and validated by the workflow itself.

A handler parameter typed with a model makes the SDK decode the payload into it; a payload that
does not fit fails the workflow task in a loop (start input) or is refused with pydantic's text
as a retryable `ValidationError` (update). Typed `Submitted[Model]`, the payload decodes to the
model when it fits and to its plain JSON value when it does not, and `parse_input` turns the
latter into one typed, non-retryable `InvalidRequest` that names the fields.
"""

from typing import Annotated, Self, TypeVar

from pydantic import BaseModel, Field, JsonValue, ValidationError, model_validator
from typing_extensions import TypeAliasType

from workflows.contracts.errors import ErrorType, refused

# Enough to name what is wrong without carrying a huge input's every problem in the failure.
MAX_PROBLEMS_NAMED = 10

M = TypeVar("M", bound=BaseModel)


class PublicInput(BaseModel):
    """A payload from outside. No text in it may hold a NUL character: PostgreSQL text cannot
    store one, so the step that writes it would fail on every retry instead of the payload
    being refused once, here."""

    @model_validator(mode="after")
    def _no_nul_characters(self) -> Self:
        for name, value in self:
            if isinstance(value, str) and "\x00" in value:
                raise ValueError(f"{name} contains a NUL character")
        return self


# left_to_right: the model first, so a payload that fits decodes exactly as it always did.
Submitted = TypeAliasType(
    "Submitted",
    Annotated[M | JsonValue, Field(union_mode="left_to_right")],
    type_params=(M,),
)


def parse_input(model: type[M], submitted: object) -> M:
    """The payload as `model`, or an ApplicationError of type InvalidRequest naming each field
    that does not fit (details: a list of {"field", "problem"})."""
    if isinstance(submitted, model):
        return submitted
    try:
        return model.model_validate(submitted)
    except ValidationError as err:
        problems = [
            {
                "field": ".".join(str(part) for part in error["loc"]) or "(input)",
                "problem": error["msg"],
            }
            for error in err.errors(include_url=False, include_input=False)
        ]
    named = "; ".join(f"{p['field']}: {p['problem']}" for p in problems[:MAX_PROBLEMS_NAMED])
    more = len(problems) - MAX_PROBLEMS_NAMED
    if more > 0:
        named += f"; and {more} more"
    raise refused(
        ErrorType.INVALID_REQUEST,
        f"invalid {model.__name__}: {named}",
        problems[:MAX_PROBLEMS_NAMED],
    )
