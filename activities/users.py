"""The saga's view of the users service: is the customer there and active, and how to reach them."""

from __future__ import annotations

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.http import ServiceCaller, current_attempt
from workflows.contract import CustomerContact


class UserActivities:
    def __init__(self, caller: ServiceCaller) -> None:
        self._users = caller

    @activity.defn(name="validate_user")
    async def validate_user(self, user_id: str) -> CustomerContact:
        response = await self._users.call(
            "GET", f"/internal/users/{user_id}", refusals={"user_not_found": "user_invalid"}
        )
        body = response.json()
        if not body.get("active", False):
            raise ApplicationError(
                f"user {user_id} is deleted",
                {"attempt": current_attempt()},
                type="user_invalid",
                non_retryable=True,
            )
        return CustomerContact(
            user_id=user_id, email=body.get("email"), phone=body.get("phone"), attempts=current_attempt()
        )

    @activity.defn(name="lookup_contact")
    async def lookup_contact(self, user_id: str) -> CustomerContact:
        """Where to send a cancellation notice, even to a deleted user; nowhere for an unknown one."""
        response = await self._users.call(
            "GET", f"/internal/users/{user_id}", refusals={"user_not_found": "user_invalid"}
        )
        body = response.json()
        return CustomerContact(
            user_id=user_id, email=body.get("email"), phone=body.get("phone"), attempts=current_attempt()
        )
