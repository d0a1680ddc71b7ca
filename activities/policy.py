"""The worker's saga settings, handed to each new saga through a recorded local activity."""

from __future__ import annotations

from temporalio import activity

from workflows.contract import SagaPolicy


class PolicyActivities:
    def __init__(self, policy: SagaPolicy) -> None:
        self._policy = policy

    @activity.defn(name="saga_policy")
    async def saga_policy(self) -> SagaPolicy:
        return self._policy
