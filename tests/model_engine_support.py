"""What the model engine's tests share: a shop whose project uses the model engine, settings
pointing at the local stand-in, and readers of the recorded calls."""

import base64
import json
import uuid
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from pydantic import SecretStr
from sqlmodel import col, select
from temporalio.api.common.v1 import Payload

from infra.codec import DEVELOPMENT_KEY_RING, ENCRYPTED_ENCODING, EncryptionCodec
from infra.settings import Settings
from models import ChangeEngineKind, ModelCall, Project
from models.db import SessionFactory
from scripts.model_stand_in import StandIn
from tests.lifecycle_support import Shop
from tests.workers import test_settings

API_KEY = "sk-stand-in-" + "7f3a9c" * 4
THEME_DARK = ('  "theme": "light",\n', '  "theme": "dark",\n')
ABOUT_LINE = ("A family shop since 1998.\n", "A family shop since 1998, open every day.\n")


def model_settings(
    stand_in_url: str, task_queue: str, deploy_queue: str, workspace: Path, **overrides: Any
) -> Settings:
    settings = test_settings(
        task_queue=task_queue, deploy_task_queue=deploy_queue, workspace_dir=workspace
    )
    return settings.model_copy(
        update={
            "model_base_url": stand_in_url,
            "model_name": StandIn().model,
            "model_api_key": SecretStr(API_KEY),
            "model_timeout_seconds": 10.0,
            **overrides,
        }
    )


async def use_model_engine(sessions: SessionFactory, shop: Shop) -> None:
    """The project chooses the model engine (the settings' default stays the rule engine)."""
    async with sessions() as session:
        project = await session.get(Project, shop.project.id)
        assert project is not None
        project.change_engine = ChangeEngineKind.MODEL
        await session.commit()


async def model_calls(sessions: SessionFactory, request_id: uuid.UUID) -> list[ModelCall]:
    async with sessions() as session:
        rows = await session.exec(
            select(ModelCall)
            .where(ModelCall.prompt_request_id == request_id)
            .order_by(col(ModelCall.revision), col(ModelCall.call_number))
        )
        return list(rows.all())


def reported_usage(stand_in: StandIn, answers: list[str]) -> int:
    """What the stand-in reported for each request it answered with these answers (in order)."""
    from scripts.model_stand_in import tokens_of

    total = 0
    for body, answer in zip(stand_in.requests, answers, strict=True):
        total += sum(4 + tokens_of(m["content"]) for m in body["messages"]) + tokens_of(answer)
    return total


def decoded_payloads(history_json: str) -> str:
    """Every payload of a workflow history, decoded: what a reader of the history can see."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict) and _encrypted(node):
            # A reader with the codec server sees through the encryption (infra/codec.py).
            sealed = json_format.ParseDict(node, Payload(), ignore_unknown_fields=True)
            walk(json_format.MessageToDict(DEVELOPMENT_CODEC.decrypt(sealed)))
        elif isinstance(node, dict):
            for key, value in node.items():
                if key == "data" and isinstance(value, str):
                    try:
                        found.append(base64.b64decode(value).decode(errors="replace"))
                    except ValueError:
                        found.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(json.loads(history_json))
    return "\n".join(found) + history_json


DEVELOPMENT_CODEC = EncryptionCodec(DEVELOPMENT_KEY_RING)


def _encrypted(node: dict[str, Any]) -> bool:
    encoding = node.get("metadata", {}).get("encoding") if "data" in node else None
    return encoding == base64.b64encode(ENCRYPTED_ENCODING).decode()
