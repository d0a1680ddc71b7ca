"""The saga's view of notifications: queue the confirmation or cancellation notice, once per key."""

from __future__ import annotations

from temporalio import activity

from activities.http import ServiceCaller, current_attempt, saga_key
from workflows.contract import Notice, NoticeResult, Step

NOTIFY_STEP = Step.NOTIFY_CUSTOMER


class NotificationActivities:
    def __init__(self, caller: ServiceCaller) -> None:
        self._notifications = caller

    @activity.defn(name="notify_customer")
    async def notify_customer(self, notice: Notice) -> NoticeResult:
        channels: list[tuple[str, str]] = []
        if notice.contact.email:
            channels.append(("email", notice.contact.email))
        if notice.contact.phone:
            channels.append(("sms", notice.contact.phone))
        notice_key = saga_key(notice.order_id, NOTIFY_STEP)
        for channel, address in channels:
            await self._notifications.call(
                "POST",
                "/notifications",
                json={
                    # One key per order, notice and channel: the notice goes out at most once.
                    "idempotency_key": f"{notice_key}:{notice.template}:{channel}",
                    "user_id": notice.user_id,
                    "channel": channel,
                    "to": address,
                    "template": notice.template,
                    "data": notice.data,
                    "order_id": notice.order_id,
                },
            )
        return NoticeResult(sent=len(channels), attempts=current_attempt())
