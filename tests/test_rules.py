"""The business rules called directly, with a session and an actor: no HTTP, no request.

These are what a webhook, a command or a job calls. Each rule writes its change and
its audit event in the caller's unit of work: when the caller rolls back, nothing
of either remains.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from kindrobots.auth.principals import UserActor, WidgetActor
from kindrobots.auth.sessions import user_actor as load
from kindrobots.context import Services
from kindrobots.db.enums import AccessMode, LlmProvider, Role
from kindrobots.db.models import (
    AuditEvent,
    AuthSession,
    Conversation,
    LlmCredential,
    Membership,
    Message,
    Organization,
    User,
)
from kindrobots.errors import Forbidden, NotFound, PaymentRequired, Unauthenticated
from kindrobots.resolvers import agents, auth, chat, credentials, manifests, organizations
from kindrobots.resolvers import projects as project_rules
from kindrobots.resolvers.agents import AgentFields
from kindrobots.resolvers.projects import ProjectFields
from tests.conftest import RunningServer, unique_email
from tests.test_tenancy import OPENAPI

NOW = datetime.now(UTC)


class Abort(Exception):
    """Raised by a test inside a unit of work to roll it back."""


def issuer(services: Services) -> auth.Issuer:
    return auth.Issuer(services.signer, timedelta(days=30))


async def owner(services: Services, name: str = "Acme") -> tuple[UserActor, uuid.UUID]:
    """A new account and its organization, as an actor holding OWNER there."""
    account = await auth.prepare_sign_up(unique_email(), "a long password", "Owner", name)
    async with services.write() as session:
        # Issued now, not at NOW (import time): the access token must still be valid when a
        # long suite reaches this module.
        signed = await auth.sign_up(
            session, datetime.now(UTC), issuer(services), auth.Client("192.0.2.1", None), account
        )
    actor = await user_actor(services, signed.access_token)
    organization_id = next(iter(actor.roles))
    return actor, organization_id


async def user_actor(services: Services, access_token: str) -> UserActor:
    async with services.read() as session:
        # The token was issued at NOW (import time); a slow run must not outlive its TTL.
        actor = await load(session, services.signer, access_token, NOW, "192.0.2.1")
    assert actor is not None
    return actor


async def test_a_rule_writes_nothing_when_its_caller_rolls_back(server: RunningServer) -> None:
    services = server.services
    actor, _ = await owner(services)
    name = f"Rolled back {uuid.uuid4().hex[:8]}"
    with pytest.raises(Abort):
        async with services.write() as session:
            created = await organizations.create_organization(
                session, actor, NOW, services.settings, name
            )
            assert created.id is not None
            raise Abort
    async with services.read() as session:
        assert await session.scalar(select(Organization).where(Organization.name == name)) is None
        events = await session.scalar(
            select(func.count()).select_from(AuditEvent).where(AuditEvent.actor_id == actor.user.id)
        )
    assert events == 1  # the sign-up's organization.create, not the rolled-back one


async def test_creating_an_organization_audits_it_under_the_actor(server: RunningServer) -> None:
    services = server.services
    actor, _ = await owner(services)
    async with services.write() as session:
        created = await organizations.create_organization(
            session, actor, NOW, services.settings, "Second"
        )
    async with services.read() as session:
        role = await session.scalar(
            select(Membership.role).where(
                Membership.organization_id == created.id, Membership.user_id == actor.user.id
            )
        )
        event = await session.scalar(
            select(AuditEvent).where(AuditEvent.organization_id == created.id)
        )
    assert role == Role.OWNER.value
    assert event is not None
    assert (event.action, event.actor_id, event.ip) == (
        "organization.create",
        actor.user.id,
        "192.0.2.1",
    )


async def test_only_owners_invite_owners_and_seats_bound_invitations(
    server: RunningServer,
) -> None:
    services = server.services
    actor, organization_id = await owner(services)
    admin = UserActor(actor.user, actor.session_id, {organization_id: Role.ADMIN})
    async with services.write() as session:
        with pytest.raises(Forbidden):
            await organizations.invite_member(
                session, admin, NOW, services.settings, organization_id, "x@example.com", Role.OWNER
            )
    # Starter has one seat, and the owner holds it.
    async with services.write() as session:
        with pytest.raises(PaymentRequired):
            await organizations.invite_member(
                session,
                actor,
                NOW,
                services.settings,
                organization_id,
                "y@example.com",
                Role.VIEWER,
            )


async def test_agent_rules_keep_to_the_named_organization(server: RunningServer) -> None:
    services = server.services
    actor, organization_id = await owner(services)
    other, other_organization = await owner(services, "Other")
    async with services.write() as session:
        agent = await agents.create_agent(
            session, actor, NOW, organization_id, AgentFields(name="Helper", model="gpt-4o")
        )
    # The organization a grant named is the only place the rule looks for the agent.
    async with services.write() as session:
        with pytest.raises(NotFound):
            await agents.update_agent(
                session, other, NOW, other_organization, agent.id, AgentFields(name="Stolen")
            )
    async with services.write() as session:
        updated = await agents.update_agent(
            session, actor, NOW, organization_id, agent.id, AgentFields(name="Renamed")
        )
    assert updated.name == "Renamed"
    async with services.write() as session:
        assert await agents.delete_agent(session, actor, NOW, organization_id, agent.id)
    async with services.read() as session:
        with pytest.raises(NotFound):
            await agents.get_agent(session, actor, agent.id)


async def test_project_updates_clear_only_what_is_named(server: RunningServer) -> None:
    services = server.services
    actor, organization_id = await owner(services)
    async with services.write() as session:
        agent = await agents.create_agent(
            session, actor, NOW, organization_id, AgentFields(name="Helper", model="gpt-4o")
        )
        project = await project_rules.create_project(
            session,
            actor,
            NOW,
            organization_id,
            ProjectFields(
                name="Shop",
                agent_id=agent.id,
                allowed_origins=["https://shop.example.com"],
                access_mode=AccessMode.PUBLIC,
                jwt_issuer="https://login.example.com/",
                jwt_audience="widget",
            ),
        )
    async with services.write() as session:
        updated = await project_rules.update_project(
            session,
            actor,
            NOW,
            organization_id,
            project.id,
            ProjectFields(cleared=frozenset({"jwt_issuer"})),
        )
    assert (updated.jwt_issuer, updated.jwt_audience, updated.name) == (None, "widget", "Shop")


async def test_a_credential_is_sealed_before_it_is_stored(server: RunningServer) -> None:
    services = server.services
    actor, organization_id = await owner(services)
    api_key = f"sk-rule-{uuid.uuid4().hex}"
    prepared = await credentials.prepare(
        services.settings,
        services.keyring,
        NOW,
        organization_id,
        LlmProvider.OPENAI,
        api_key,
        "Main",
        None,
    )
    async with services.write() as session:
        row = await credentials.add_credential(session, actor, NOW, prepared)
    async with services.read() as session:
        stored = await session.get(LlmCredential, row.id)
        events = (
            await session.scalars(
                select(AuditEvent.details).where(AuditEvent.organization_id == organization_id)
            )
        ).all()
    assert stored is not None and api_key.encode() not in stored.ciphertext
    assert credentials.open_api_key(services.keyring, stored) == api_key
    assert api_key not in json.dumps(list(events))


async def test_a_manifest_named_twice_gets_a_second_version(server: RunningServer) -> None:
    services = server.services
    actor, organization_id = await owner(services)
    document = await manifests.parse_document(OPENAPI)
    for expected in (1, 2):
        async with services.write() as session:
            manifest = await manifests.create_manifest(
                session, actor, NOW, organization_id, "Orders", document
            )
        assert manifest.version == expected


async def widget_for(services: Services) -> tuple[WidgetActor, chat.ChatTarget]:
    actor, organization_id = await owner(services)
    async with services.write() as session:
        agent = await agents.create_agent(
            session, actor, NOW, organization_id, AgentFields(name="Helper", model="demo")
        )
        project = await project_rules.create_project(
            session,
            actor,
            NOW,
            organization_id,
            ProjectFields(name="Shop", agent_id=agent.id, allowed_origins=[]),
        )
    widget = WidgetActor(project.id, organization_id, None, project.publishable_key)
    async with services.read() as session:
        target = await chat.load_target(session, widget)
    return widget, target


async def test_a_new_conversation_is_stored_only_with_its_first_message(
    server: RunningServer,
) -> None:
    services = server.services
    widget, _ = await widget_for(services)
    with pytest.raises(Abort):
        async with services.write() as session:
            await chat.open_turn(session, widget, NOW, None, "Hello")
            raise Abort
    async with services.read() as session:
        conversations = await session.scalar(
            select(func.count())
            .select_from(Conversation)
            .where(Conversation.project_id == widget.project_id)
        )
    assert conversations == 0
    async with services.write() as session:
        turn = await chat.open_turn(session, widget, NOW, None, "Hello")
    async with services.read() as session:
        stored = (
            await session.scalars(
                select(Message.content).where(Message.conversation_id == turn.conversation_id)
            )
        ).all()
    assert list(stored) == ["Hello"]


async def test_a_turn_streams_and_stores_the_reply(server: RunningServer) -> None:
    services = server.services
    widget, target = await widget_for(services)
    async with services.write() as session:
        turn = await chat.open_turn(session, widget, NOW, None, "Hello")
    reply = chat.Reply()
    async for _ in chat.stream_reply(services.settings, services.keyring, target, turn, reply):
        pass
    async with services.write() as session:
        later = NOW + timedelta(seconds=1)
        message = await chat.store_reply(session, later, turn, reply, partial=False)
    assert message.content and message.content == "".join(reply.texts)
    # The next turn reads the history of that conversation.
    async with services.write() as session:
        second = await chat.open_turn(
            session,
            widget,
            NOW + timedelta(seconds=2),
            turn.conversation_id,
            "And then?",
            conversation_token=turn.conversation_token,
        )
    assert [m.role for m in second.history] == ["user", "assistant"]


async def test_another_visitor_cannot_continue_a_conversation(server: RunningServer) -> None:
    services = server.services
    widget, _ = await widget_for(services)
    async with services.write() as session:
        turn = await chat.open_turn(session, widget, NOW, None, "Hello")
    signed_in = WidgetActor(widget.project_id, widget.organization_id, "user-42")
    other_project, _ = await widget_for(services)
    for stranger in (signed_in, other_project):
        async with services.write() as session:
            with pytest.raises(NotFound):
                await chat.open_turn(session, stranger, NOW, turn.conversation_id, "Hi")


async def test_a_rotated_key_ends_what_a_widget_may_load(server: RunningServer) -> None:
    services = server.services
    widget, target = await widget_for(services)
    actor = UserActor(
        await _user(services, widget.organization_id),
        uuid.uuid4(),
        {widget.organization_id: Role.OWNER},
    )
    async with services.write() as session:
        await project_rules.rotate_project_key(
            session, actor, NOW, widget.organization_id, widget.project_id
        )
    async with services.read() as session:
        with pytest.raises(Forbidden):
            await chat.load_target(session, widget)
    assert target.tier.value == "STARTER"


async def _user(services: Services, organization_id: uuid.UUID) -> User:
    async with services.read() as session:
        user = await session.scalar(
            select(User)
            .join(Membership, Membership.user_id == User.id)
            .where(Membership.organization_id == organization_id)
        )
    assert user is not None
    return user


async def test_a_reused_refresh_token_ends_its_family(server: RunningServer) -> None:
    services = server.services
    account = await auth.prepare_sign_up(unique_email(), "a long password", "Me", "Org")
    async with services.write() as session:
        signed = await auth.sign_up(
            session, NOW, issuer(services), auth.Client(None, None), account
        )
    now = datetime.now(UTC)
    async with services.write() as session:
        rotated = await auth.refresh_session(session, now, issuer(services), signed.refresh_token)
    assert rotated is not None
    async with services.write() as session:
        refused = await auth.refresh_session(session, now, issuer(services), signed.refresh_token)
    assert refused is None
    async with services.read() as session:
        revoked = await session.scalar(
            select(AuthSession.revoked_reason).where(AuthSession.user_id == signed.user.id)
        )
    assert revoked == "refresh_reuse"
    async with services.write() as session:
        with pytest.raises(Unauthenticated):
            await auth.refresh_session(session, now, issuer(services), rotated.refresh_token)
