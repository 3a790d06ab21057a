"""Staff containment (security policy 8.2): suspend, restore, revoke sessions, rotate keys.

Every field needs staff (``staff()``); none of them can make anyone staff — that is
``kindrobots staff grant`` alone. Each commits, then announces what it closes, so that
every instance ends the matching WebSockets at once.
"""

from __future__ import annotations

import strawberry

from kindrobots.ids import from_global_id
from kindrobots.resolvers import containment
from kindrobots.schema.base import Info
from kindrobots.schema.permissions import staff, staff_caller


@strawberry.type
class StaffMutation:
    @strawberry.mutation(
        extensions=staff(),
        description="Refuse the organization's members and widgets (FORBIDDEN) until restored.",
    )
    async def suspend_organization(self, info: Info, id: strawberry.ID, reason: str) -> bool:
        services = info.context.services
        async with services.write() as session:
            closing = await containment.suspend_organization(
                session, staff_caller(info), info.now(), from_global_id(id, "Organization"), reason
            )
        await containment.announce(services.broker, closing)
        return True

    @strawberry.mutation(
        extensions=staff(), description="Lift a suspension; false when there was none."
    )
    async def restore_organization(self, info: Info, id: strawberry.ID) -> bool:
        async with info.context.services.write() as session:
            return await containment.restore_organization(
                session, staff_caller(info), info.now(), from_global_id(id, "Organization")
            )

    @strawberry.mutation(
        extensions=staff(), description="Refuse every call of the user until restored."
    )
    async def suspend_user(self, info: Info, id: strawberry.ID, reason: str) -> bool:
        services = info.context.services
        async with services.write() as session:
            closing = await containment.suspend_user(
                session, staff_caller(info), info.now(), from_global_id(id, "User"), reason
            )
        await containment.announce(services.broker, closing)
        return True

    @strawberry.mutation(
        extensions=staff(), description="Lift a suspension; false when there was none."
    )
    async def restore_user(self, info: Info, id: strawberry.ID) -> bool:
        async with info.context.services.write() as session:
            return await containment.restore_user(
                session, staff_caller(info), info.now(), from_global_id(id, "User")
            )

    @strawberry.mutation(
        extensions=staff(), description="End every session of the user; how many were live."
    )
    async def revoke_user_sessions(self, info: Info, id: strawberry.ID) -> int:
        services = info.context.services
        async with services.write() as session:
            closing = await containment.revoke_user_sessions(
                session, staff_caller(info), info.now(), from_global_id(id, "User")
            )
        await containment.announce(services.broker, closing)
        return closing.count

    @strawberry.mutation(
        extensions=staff(),
        description="End every session of every member of the organization; how many.",
    )
    async def revoke_organization_sessions(self, info: Info, id: strawberry.ID) -> int:
        services = info.context.services
        async with services.write() as session:
            closing = await containment.revoke_organization_sessions(
                session, staff_caller(info), info.now(), from_global_id(id, "Organization")
            )
        await containment.announce(services.broker, closing)
        return closing.count

    @strawberry.mutation(
        extensions=staff(),
        description="A new publishable key for every project of the organization; how many.",
    )
    async def rotate_organization_project_keys(self, info: Info, id: strawberry.ID) -> int:
        services = info.context.services
        async with services.write() as session:
            closing = await containment.rotate_organization_keys(
                session, staff_caller(info), info.now(), from_global_id(id, "Organization")
            )
        await containment.announce(services.broker, closing)
        return closing.count
