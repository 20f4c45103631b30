"""Request and response schemas of assignment, exposures (SPEC §4) and OFREP."""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, field_validator

from experiments.schemas import Strict, Text, UnitId, text_problem
from experiments.schemas.events import ClientTime, SentAt

_OCCURRED_DOC = ("When the variant was shown, on the client's clock (RFC 3339); corrected "
                 "by sent_at and clamped to [received − 24 h, received]. Default: received.")
_SENT_DOC = "The client's clock when it sent this request (RFC 3339), for the skew correction."
_USER_DOC = ("The customer id, once known (SPEC §14): a variant stored for any id linked to it "
             "wins (reason assigned); a first exposure is stored under it.")

Reason = Literal["assigned", "override", "traffic", "targeting", "layer", "holdout",
                 "not_running", "concluded", "not_found"]
MAX_ATTRIBUTES = 100
MAX_ATTRIBUTES_BYTES = 8 * 1024
MAX_DEPTH = 5


def attributes_problem(attributes: dict[str, Any]) -> str | None:
    """Why attributes cannot be snapshotted into an exposure (JSON-safe, small), if so."""
    if len(attributes) > MAX_ATTRIBUTES:
        return f"at most {MAX_ATTRIBUTES} attributes"
    problem = _value_problem(attributes, 0)
    if problem:
        return problem
    if len(json.dumps(attributes)) > MAX_ATTRIBUTES_BYTES:
        return f"at most {MAX_ATTRIBUTES_BYTES} bytes of JSON"
    return None


def _value_problem(value: Any, depth: int) -> str | None:
    if depth > MAX_DEPTH:
        return f"nested deeper than {MAX_DEPTH} levels"
    if isinstance(value, float) and not math.isfinite(value):
        return "numbers must be finite"
    if isinstance(value, str):
        return text_problem(value)
    if isinstance(value, dict):
        items = [*value.keys(), *value.values()]
    elif isinstance(value, list):
        items = value
    else:
        return None
    return next((problem for item in items
                 if (problem := _value_problem(item, depth + 1)) is not None), None)


def _checked_attributes(value: dict[str, Any]) -> dict[str, Any]:
    problem = attributes_problem(value)
    if problem:
        raise ValueError(problem)
    return value


Attributes = Annotated[dict[str, Any], AfterValidator(_checked_attributes)]


class AssignIn(Strict):
    """``POST /api/v1/assign``: one unit, all (or the named) experiments of a page."""

    unit_id: UnitId = Field(examples=["visitor-42"])
    user_id: UnitId | None = Field(None, description=_USER_DOC, examples=["customer-981"])
    attributes: Attributes = Field(default_factory=dict, examples=[{"country": "FR"}])
    experiments: list[Text] | None = Field(None, max_length=100,
                                          examples=[["checkout-redesign"]])
    track: StrictBool = True
    occurred_at: ClientTime = Field(None, description=_OCCURRED_DOC)
    sent_at: SentAt = Field(None, description=_SENT_DOC)

    @field_validator("experiments")
    @classmethod
    def _short_keys(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and any(len(key) > 200 for key in value):
            raise ValueError("experiment keys are at most 200 characters")
        return value


class AssignmentOut(BaseModel):
    experiment: str
    variant: str | None
    payload: dict[str, Any]
    in_experiment: bool
    reason: Reason


class AssignOut(BaseModel):
    unit_id: str
    assignments: list[AssignmentOut]


class ExposureIn(Strict):
    """``POST /api/v1/exposures``: the variant was shown; send the same attributes as assign."""

    experiment: Text = Field(min_length=1, max_length=200, examples=["checkout-redesign"])
    unit_id: UnitId = Field(examples=["visitor-42"])
    user_id: UnitId | None = Field(None, description=_USER_DOC, examples=["customer-981"])
    attributes: Attributes = Field(default_factory=dict)
    occurred_at: ClientTime = Field(None, description=_OCCURRED_DOC,
                                    examples=["2026-11-24T10:00:00Z"])
    sent_at: SentAt = Field(None, description=_SENT_DOC,
                                examples=["2026-11-24T10:00:02Z"])


class ExposureOut(AssignmentOut):
    unit_id: str


class OfrepRequest(BaseModel):
    """OFREP evaluation request: ``targetingKey`` is the unit, the rest are attributes."""

    model_config = ConfigDict(extra="allow")

    context: dict[str, Any] | None = Field(
        None, examples=[{"targetingKey": "visitor-42", "country": "FR"}])


class OfrepEvaluation(BaseModel):
    key: str
    value: Any
    reason: Literal["SPLIT", "TARGETING_MATCH", "DEFAULT", "DISABLED"]
    variant: str
    metadata: dict[str, Any] = Field(default_factory=dict)


OfrepErrorCode = Literal["PARSE_ERROR", "TARGETING_KEY_MISSING", "INVALID_CONTEXT", "GENERAL",
                         "FLAG_NOT_FOUND"]


class OfrepError(BaseModel):
    key: str | None = None
    errorCode: OfrepErrorCode
    errorDetails: str


# What a 400 of either OFREP route can say: the body is not JSON, the context has no
# targetingKey, or the context (or the query string) is invalid. Validation failures are
# 400s in this shape, never the 422 envelope of the other routes.
OfrepInvalidCode = Literal["PARSE_ERROR", "TARGETING_KEY_MISSING", "INVALID_CONTEXT"]


class OfrepBulkInvalid(BaseModel):
    """Invalid request: PARSE_ERROR (malformed JSON), TARGETING_KEY_MISSING (no
    context.targetingKey) or INVALID_CONTEXT (the body, context or query string is
    invalid; errorDetails names the field)."""

    errorCode: OfrepInvalidCode
    errorDetails: str


class OfrepFlagInvalid(OfrepBulkInvalid):
    """Invalid request: PARSE_ERROR (malformed JSON), TARGETING_KEY_MISSING (no
    context.targetingKey) or INVALID_CONTEXT (the body, context or query string is
    invalid; errorDetails names the field); key is the flag's."""

    key: str


class OfrepFlagNotFound(BaseModel):
    """Flag not found: no experiment has this key (FLAG_NOT_FOUND)."""

    key: str
    errorCode: Literal["FLAG_NOT_FOUND"]
    errorDetails: str


class OfrepBulk(BaseModel):
    flags: list[OfrepEvaluation | OfrepError]
