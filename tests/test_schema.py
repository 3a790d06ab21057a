"""The schema's guards: every root field is permission-checked or explicitly public, and
the contract names of API.md are all there."""

from __future__ import annotations

from collections.abc import AsyncGenerator

import graphql
import pytest
import strawberry
from graphql.utilities import (
    BreakingChange,
    DangerousChange,
    DangerousChangeType,
    find_breaking_changes,
    find_dangerous_changes,
)
from strawberry.permission import BasePermission, PermissionExtension
from strawberry.types.field import StrawberryField

from kindrobots.config import Settings
from kindrobots.schema import build_schema
from kindrobots.schema.permissions import PUBLIC_FIELDS


def _guarded(definition: object) -> bool:
    if not isinstance(definition, StrawberryField):
        return False
    if definition.permission_classes:
        return True
    return any(
        isinstance(extension, PermissionExtension) and extension.permissions
        for extension in definition.extensions
    )


def root_fields(schema: strawberry.Schema) -> dict[str, object]:
    """``Type.fieldName`` of every Query, Mutation and Subscription field → its definition."""
    graphql_schema = schema._schema
    fields: dict[str, object] = {}
    roots = (
        graphql_schema.query_type,
        graphql_schema.mutation_type,
        graphql_schema.subscription_type,
    )
    for root in roots:
        if root is None:
            continue
        for name, field in root.fields.items():
            fields[f"{root.name}.{name}"] = (field.extensions or {}).get("strawberry-definition")
    return fields


def unguarded_fields(schema: strawberry.Schema, public: frozenset[str]) -> list[str]:
    """Root fields with neither a permission class nor a place on the public list."""
    return sorted(
        name
        for name, definition in root_fields(schema).items()
        if name not in public and not _guarded(definition)
    )


# --- the guard, proven on a schema made to break it -------------------------------------


class _Allow(BasePermission):
    def has_permission(self, source: object, info: strawberry.Info, **kwargs: object) -> bool:
        return True


def _number() -> int:
    return 1


def _done() -> bool:
    return True


@strawberry.type
class _Query:
    guarded: int = strawberry.field(resolver=_number, permission_classes=[_Allow])
    listed: int = strawberry.field(resolver=_number)
    forgotten_field: int = strawberry.field(resolver=_number)
    empty_guard: int = strawberry.field(
        resolver=_number, extensions=[PermissionExtension(permissions=[])]
    )


@strawberry.type
class _Mutation:
    do_it: bool = strawberry.mutation(resolver=_done)
    do_it_safely: bool = strawberry.mutation(
        resolver=_done, extensions=[PermissionExtension(permissions=[_Allow()])]
    )


@strawberry.type
class _Subscription:
    @strawberry.subscription
    async def ticks(self) -> AsyncGenerator[int, None]:
        yield 1


def test_the_guard_flags_unguarded_fields() -> None:
    schema = strawberry.Schema(query=_Query, mutation=_Mutation, subscription=_Subscription)
    assert unguarded_fields(schema, frozenset({"Query.listed"})) == [
        "Mutation.doIt",
        "Query.emptyGuard",
        "Query.forgottenField",
        "Subscription.ticks",
    ]
    assert (
        unguarded_fields(
            schema,
            frozenset(
                {
                    "Query.listed",
                    "Query.emptyGuard",
                    "Query.forgottenField",
                    "Mutation.doIt",
                    "Subscription.ticks",
                }
            ),
        )
        == []
    )


# --- the real schema ---------------------------------------------------------------------


@pytest.mark.parametrize("production", [False, True])
def test_every_root_field_is_guarded_or_public(production: bool) -> None:
    settings = Settings.model_construct(env="production" if production else "development")
    unguarded = unguarded_fields(build_schema(settings), PUBLIC_FIELDS)
    assert unguarded == [], (
        f"root fields without a permission class: {unguarded}; add permission_classes=[...] "
        "or, if anyone may call them, list them in kindrobots.schema.permissions.PUBLIC_FIELDS"
    )


def test_public_fields_has_no_stale_entries() -> None:
    existing = set(root_fields(build_schema()))
    stale = sorted(PUBLIC_FIELDS - existing)
    assert stale == [], f"PUBLIC_FIELDS lists fields that do not exist: {stale}"


# --- API.md: the binding names, for the part that is built --------------------------------

CONTRACT = """
scalar DateTime
scalar JSON

enum Role { OWNER ADMIN EDITOR VIEWER }
enum Tier { STARTER PROFESSIONAL ENTERPRISE }

interface Node { id: ID! }

type Query {
  node(id: ID!): Node
  me: Viewer
  organization(id: ID!): Organization
  plans: [Plan!]!
}

type Viewer { user: User!  memberships: [Membership!]! }
type User implements Node { id: ID!  email: String!  displayName: String!  createdAt: DateTime! }
type Membership { organization: Organization!  user: User!  role: Role!  createdAt: DateTime! }
type Plan {
  tier: Tier!  name: String!  adminSeats: Int  chatMessagesPerMinute: Int!  priceId: String
}

type Organization implements Node {
  id: ID!  name: String!  slug: String!  tier: Tier!  createdAt: DateTime!
  members(first: Int = 20, after: String): MembershipConnection!
  invitations: [Invitation!]!
  auditLog(first: Int = 50, after: String, action: String): AuditEventConnection!
}

type Invitation { id: ID!  email: String!  role: Role!  expiresAt: DateTime! }
type AuditEvent implements Node {
  id: ID!  action: String!  actor: User  targetType: String  targetId: String
  metadata: JSON!  ip: String  createdAt: DateTime!
}

type PageInfo {
  hasNextPage: Boolean!  hasPreviousPage: Boolean!  startCursor: String  endCursor: String
}
type MembershipConnection { edges: [MembershipEdge]  pageInfo: PageInfo! }
type MembershipEdge { cursor: String!  node: Membership }
type AuditEventConnection { edges: [AuditEventEdge]  pageInfo: PageInfo! }
type AuditEventEdge { cursor: String!  node: AuditEvent }

type AuthPayload { accessToken: String!  refreshToken: String!  expiresAt: DateTime!  user: User! }
type InvitationResult { invitation: Invitation!  token: String! }

input SignUpInput {
  email: String!  password: String!  displayName: String!  organizationName: String!
}
input SignInInput { email: String!  password: String! }
input CreateOrganizationInput { name: String! }
input InviteMemberInput { organizationId: ID!  email: String!  role: Role! }
input UpdateMemberRoleInput { organizationId: ID!  userId: ID!  role: Role! }

type Mutation {
  signUp(input: SignUpInput!): AuthPayload!
  signIn(input: SignInInput!): AuthPayload!
  refreshSession(refreshToken: String): AuthPayload!
  signOut: Boolean!
  signOutEverywhere: Boolean!
  createOrganization(input: CreateOrganizationInput!): Organization!
  inviteMember(input: InviteMemberInput!): InvitationResult!
  acceptInvitation(token: String!): Membership!
  updateMemberRole(input: UpdateMemberRoleInput!): Membership!
  removeMember(organizationId: ID!, userId: ID!): Boolean!
}
"""


def contract_violations(contract_sdl: str, built: graphql.GraphQLSchema) -> list[str]:
    """What a client written against ``contract_sdl`` would trip over in ``built``."""
    contract = graphql.build_schema(contract_sdl)
    changes: list[BreakingChange | DangerousChange] = [*find_breaking_changes(contract, built)]
    changes += [
        change
        for change in find_dangerous_changes(contract, built)
        if change.type == DangerousChangeType.ARG_DEFAULT_VALUE_CHANGE
    ]
    return sorted(change.description for change in changes)


def test_api_contract_names_are_in_the_schema() -> None:
    violations = contract_violations(CONTRACT, build_schema()._schema)
    assert violations == [], "\n".join(violations)


def test_contract_check_catches_a_rename_and_a_new_default() -> None:
    renamed = CONTRACT.replace("plans: [Plan!]!", "plans: [Plan!]!\n  planList: [Plan!]!")
    changed = renamed.replace("members(first: Int = 20", "members(first: Int = 25")
    violations = contract_violations(changed, build_schema()._schema)
    assert len(violations) == 2, violations
    assert any("planList" in violation for violation in violations)
    assert any("members(first:)" in violation for violation in violations)


def test_enums_have_exactly_the_contract_values() -> None:
    schema = build_schema()._schema
    role, tier = schema.type_map["Role"], schema.type_map["Tier"]
    assert isinstance(role, graphql.GraphQLEnumType)
    assert isinstance(tier, graphql.GraphQLEnumType)
    assert list(role.values) == ["OWNER", "ADMIN", "EDITOR", "VIEWER"]
    assert list(tier.values) == ["STARTER", "PROFESSIONAL", "ENTERPRISE"]
