"""Agents: a model, a system prompt, a credential and the manifests it may call."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from kindrobots.auth.principals import UserActor
from kindrobots.db.bounds import MAX_MANIFESTS_PER_AGENT, MAX_OPERATIONS_PER_AGENT
from kindrobots.db.locks import lock_organization
from kindrobots.db.models import (
    Agent,
    AgentManifest,
    LlmCredential,
    Manifest,
    ManifestVersion,
    Project,
)
from kindrobots.db.pagination import Page
from kindrobots.errors import BadUserInput, Conflict, NotFound
from kindrobots.resolvers import audit, validation
from kindrobots.resolvers.access import lock_row, organization_page, scoped_get

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,99}$")
MAX_SYSTEM_PROMPT = 20_000


@dataclass
class AgentFields:
    """Validated input; on update ``None`` means unchanged, and ``clear_credential``
    detaches the credential (the only field of an agent that can be cleared)."""

    name: str | None = None
    system_prompt: str | None = None
    model: str | None = None
    temperature: float | None = None
    llm_credential_id: uuid.UUID | None = None
    clear_credential: bool = False
    manifest_ids: list[uuid.UUID] | None = None


def validate(fields: AgentFields) -> AgentFields:
    if fields.name is not None:
        fields.name = validation.text(fields.name, "name", 100)
    if fields.system_prompt is not None:
        if len(fields.system_prompt) > MAX_SYSTEM_PROMPT:
            raise BadUserInput("systemPrompt", f"At most {MAX_SYSTEM_PROMPT} characters.")
        validation.no_nul(fields.system_prompt, "systemPrompt")
    if fields.model is not None:
        fields.model = fields.model.strip()
        if not MODEL_NAME.match(fields.model):
            raise BadUserInput("model", "Enter a model name such as gpt-4o or claude-sonnet-4.")
    if fields.temperature is not None and not 0.0 <= fields.temperature <= 2.0:
        raise BadUserInput("temperature", "Temperature must be between 0 and 2.")
    if fields.manifest_ids is not None:
        if len(fields.manifest_ids) > MAX_MANIFESTS_PER_AGENT:
            raise BadUserInput(
                "manifestIds", f"At most {MAX_MANIFESTS_PER_AGENT} manifests per agent."
            )
        fields.manifest_ids = list(dict.fromkeys(fields.manifest_ids))
    return fields


async def _check_references(
    session: AsyncSession, organization_id: uuid.UUID, fields: AgentFields
) -> None:
    """A credential or manifest of another organization is NOT_FOUND, like a missing one."""
    if fields.llm_credential_id is not None:
        found = await session.scalar(
            select(LlmCredential.id).where(
                LlmCredential.id == fields.llm_credential_id,
                LlmCredential.organization_id == organization_id,
            )
        )
        if found is None:
            raise NotFound("The LLM credential was not found.")
    if fields.manifest_ids:
        # With each manifest, the operations of its newest version: the agent's tools.
        attached = (
            await session.execute(
                select(Manifest.id, ManifestVersion.operations)
                .outerjoin(
                    ManifestVersion,
                    and_(
                        ManifestVersion.manifest_id == Manifest.id,
                        ManifestVersion.version == Manifest.version,
                    ),
                )
                .where(
                    Manifest.id.in_(fields.manifest_ids),
                    Manifest.organization_id == organization_id,
                )
            )
        ).all()
        if {manifest_id for manifest_id, _ in attached} != set(fields.manifest_ids):
            raise NotFound("A manifest was not found.")
        tools = sum(len(operations or ()) for _, operations in attached)
        if tools > MAX_OPERATIONS_PER_AGENT:
            raise BadUserInput(
                "manifestIds",
                f"An agent may call at most {MAX_OPERATIONS_PER_AGENT} operations; "
                f"these manifests hold {tools}.",
            )


async def _set_manifests(
    session: AsyncSession, agent: Agent, manifest_ids: list[uuid.UUID]
) -> None:
    await session.execute(delete(AgentManifest).where(AgentManifest.agent_id == agent.id))
    session.add_all(
        AgentManifest(
            agent_id=agent.id,
            manifest_id=manifest_id,
            organization_id=agent.organization_id,
            position=position,
        )
        for position, manifest_id in enumerate(manifest_ids)
    )


async def create_agent(
    session: AsyncSession,
    actor: UserActor,
    now: datetime,
    organization_id: uuid.UUID,
    fields: AgentFields,
) -> Agent:
    fields = validate(fields)
    assert fields.name is not None and fields.model is not None
    # Under the lock a concurrent delete of the credential or a manifest cannot slip in.
    await lock_organization(session, organization_id)
    await _check_references(session, organization_id, fields)
    agent = Agent(
        organization_id=organization_id,
        name=fields.name,
        system_prompt=fields.system_prompt or "",
        model=fields.model,
        temperature=0.7 if fields.temperature is None else fields.temperature,
        llm_credential_id=fields.llm_credential_id,
        created_at=now,
        updated_at=now,
    )
    session.add(agent)
    await session.flush()
    await _set_manifests(session, agent, fields.manifest_ids or [])
    await audit.record(
        session,
        actor,
        now,
        organization_id=organization_id,
        action="agent.create",
        target=("Agent", agent.id),
        details={"name": agent.name, "model": agent.model},
    )
    return agent


async def get_agent(session: AsyncSession, actor: UserActor, agent_id: uuid.UUID) -> Agent:
    return await scoped_get(session, actor, Agent, agent_id)


async def update_agent(
    session: AsyncSession,
    actor: UserActor,
    now: datetime,
    organization_id: uuid.UUID,
    agent_id: uuid.UUID,
    fields: AgentFields,
) -> Agent:
    fields = validate(fields)
    agent = await lock_row(session, Agent, agent_id, organization_id)
    await _check_references(session, agent.organization_id, fields)
    changed = []
    for name in ("name", "system_prompt", "model", "temperature", "llm_credential_id"):
        value = getattr(fields, name)
        if value is not None and value != getattr(agent, name):
            setattr(agent, name, value)
            changed.append(name)
    if fields.clear_credential and agent.llm_credential_id is not None:
        agent.llm_credential_id = None
        changed.append("llm_credential_id")
    if fields.manifest_ids is not None:
        await _set_manifests(session, agent, fields.manifest_ids)
        changed.append("manifests")
    agent.updated_at = now
    await audit.record(
        session,
        actor,
        now,
        organization_id=agent.organization_id,
        action="agent.update",
        target=("Agent", agent.id),
        details={"changed": changed},
    )
    return agent


async def delete_agent(
    session: AsyncSession,
    actor: UserActor,
    now: datetime,
    organization_id: uuid.UUID,
    agent_id: uuid.UUID,
) -> bool:
    # Ordered with createProject/updateProject: a project cannot appear after the count.
    agent = await lock_row(session, Agent, agent_id, organization_id)
    projects = await session.scalar(
        select(func.count()).select_from(Project).where(Project.agent_id == agent.id)
    )
    if projects:
        raise Conflict(f"The agent is used by {projects} project(s); delete those first.")
    await session.delete(agent)
    await audit.record(
        session,
        actor,
        now,
        organization_id=agent.organization_id,
        action="agent.delete",
        target=("Agent", agent.id),
        details={"name": agent.name},
    )
    return True


def _like_pattern(search: str) -> str:
    escaped = search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


async def list_agents(
    session: AsyncSession,
    actor: UserActor,
    organization_id: uuid.UUID,
    first: int,
    after: str | None,
    search: str | None,
) -> Page[Agent]:
    conditions = []
    if search and search.strip():
        if len(search) > 100:
            raise BadUserInput("search", "Search for at most 100 characters.")
        validation.no_nul(search, "search")
        conditions.append(Agent.name.ilike(_like_pattern(search.strip()), escape="\\"))
    return await organization_page(
        session, actor, Agent, organization_id, first, after, *conditions
    )
