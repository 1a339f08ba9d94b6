"""Custom search attributes that make lifecycles and deployments findable in the Web UI,
and the sets each workflow is started with.

Registered by the embedded stack and the test servers; a real cluster needs
`temporal operator search-attribute create --name <Name> --type Keyword` for each.

A starter that knows a workflow's attributes sets them at start (no event, no extra visibility
write); the workflow upserts only what it was not started with (missing_from).
"""

import uuid

from temporalio.common import (
    SearchAttributeKey,
    SearchAttributePair,
    SearchAttributeUpdate,
    TypedSearchAttributes,
)

from models.lifecycle import DeploymentEnvironment, PromptStatus

TENANT_ID = SearchAttributeKey.for_keyword("TenantId")
PROJECT_ID = SearchAttributeKey.for_keyword("ProjectId")
PROMPT_STATUS = SearchAttributeKey.for_keyword("PromptStatus")
RISK_LEVEL = SearchAttributeKey.for_keyword("RiskLevel")
ENVIRONMENT = SearchAttributeKey.for_keyword("Environment")
CONNECTOR_ID = SearchAttributeKey.for_keyword("ConnectorId")

ALL = (TENANT_ID, PROJECT_ID, PROMPT_STATUS, RISK_LEVEL, ENVIRONMENT, CONNECTOR_ID)


def prompt_request_attributes(
    tenant_id: uuid.UUID, project_id: uuid.UUID, status: PromptStatus = PromptStatus.RECEIVED
) -> TypedSearchAttributes:
    return TypedSearchAttributes(
        [
            SearchAttributePair(TENANT_ID, str(tenant_id)),
            SearchAttributePair(PROJECT_ID, str(project_id)),
            SearchAttributePair(PROMPT_STATUS, status.value),
        ]
    )


def deployment_attributes(
    tenant_id: uuid.UUID, project_id: uuid.UUID, environment: DeploymentEnvironment
) -> TypedSearchAttributes:
    return TypedSearchAttributes(
        [
            SearchAttributePair(TENANT_ID, str(tenant_id)),
            SearchAttributePair(PROJECT_ID, str(project_id)),
            SearchAttributePair(ENVIRONMENT, environment.value),
        ]
    )


def commerce_attributes(
    tenant_id: uuid.UUID, connector_id: uuid.UUID | None = None
) -> TypedSearchAttributes:
    """A commerce module run: its tenant, and the connector it syncs."""
    pairs = [SearchAttributePair(TENANT_ID, str(tenant_id))]
    if connector_id is not None:
        pairs.append(SearchAttributePair(CONNECTOR_ID, str(connector_id)))
    return TypedSearchAttributes(pairs)


def missing_from(
    given: TypedSearchAttributes, wanted: TypedSearchAttributes
) -> list[SearchAttributeUpdate]:
    """The upserts that set what `wanted` holds and `given` (the start's attributes) does not."""
    return [
        pair.key.value_set(pair.value)
        for pair in wanted.search_attributes
        if given.get(pair.key) != pair.value
    ]
