"""Tables, enums and allowed transitions of every domain, plus the engine and migrations.

Importing this package registers every table on ``SQLModel.metadata``.
"""

from models.billing import TokenAccount, TokenDirection, TokenTransaction, TokenTransactionKind
from models.commerce import (
    ConnectorCredential,
    Customer,
    ModuleExecution,
    ModuleExecutionStatus,
    ModuleKind,
    Order,
    OrderSource,
    OrderStatus,
    SyncCheckpoint,
    SyncStream,
)
from models.lifecycle import (
    Approval,
    ApprovalDecision,
    ApprovalPolicy,
    ChangeJob,
    ChangeJobKind,
    ChangeJobStatus,
    Deployment,
    DeploymentEnvironment,
    DeploymentLaneEntry,
    DeploymentPlan,
    DeploymentStatus,
    PlanApprovalStatus,
    PromptRequest,
    PromptStatus,
    RiskLevel,
    UsedDecisionToken,
)
from models.model_calls import ModelCall, ModelCallOutcome
from models.projects import ChangeEngineKind, Connector, ConnectorKind, ConnectorStatus, Project
from models.tenancy import PlanTier, Tenant, User, UserRole
from models.transitions import TRANSITIONS, IllegalTransition, ensure_transition, is_terminal

# The 13 entities of the platform's data model (the contract in shared/seeds).
ENTITIES = (
    Tenant,
    User,
    TokenAccount,
    TokenTransaction,
    Project,
    Connector,
    PromptRequest,
    DeploymentPlan,
    Deployment,
    ChangeJob,
    ModuleExecution,
    Customer,
    Order,
)

__all__ = [
    "ENTITIES",
    "TRANSITIONS",
    "Approval",
    "ApprovalDecision",
    "ApprovalPolicy",
    "ChangeEngineKind",
    "ChangeJob",
    "ChangeJobKind",
    "ChangeJobStatus",
    "Connector",
    "ConnectorCredential",
    "ConnectorKind",
    "ConnectorStatus",
    "Customer",
    "Deployment",
    "DeploymentEnvironment",
    "DeploymentLaneEntry",
    "DeploymentPlan",
    "DeploymentStatus",
    "IllegalTransition",
    "ModelCall",
    "ModelCallOutcome",
    "ModuleExecution",
    "ModuleExecutionStatus",
    "ModuleKind",
    "Order",
    "OrderSource",
    "OrderStatus",
    "PlanApprovalStatus",
    "PlanTier",
    "Project",
    "PromptRequest",
    "PromptStatus",
    "RiskLevel",
    "SyncCheckpoint",
    "SyncStream",
    "Tenant",
    "TokenAccount",
    "TokenDirection",
    "TokenTransaction",
    "TokenTransactionKind",
    "UsedDecisionToken",
    "User",
    "UserRole",
    "ensure_transition",
    "is_terminal",
]
