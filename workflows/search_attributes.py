"""Custom search attributes that make lifecycles findable in the Web UI.

Registered by the embedded stack and the test servers; a real cluster needs
`temporal operator search-attribute create --name <Name> --type Keyword` for each.
"""

from temporalio.common import SearchAttributeKey

TENANT_ID = SearchAttributeKey.for_keyword("TenantId")
PROJECT_ID = SearchAttributeKey.for_keyword("ProjectId")
PROMPT_STATUS = SearchAttributeKey.for_keyword("PromptStatus")
RISK_LEVEL = SearchAttributeKey.for_keyword("RiskLevel")
ENVIRONMENT = SearchAttributeKey.for_keyword("Environment")

ALL = (TENANT_ID, PROJECT_ID, PROMPT_STATUS, RISK_LEVEL, ENVIRONMENT)
