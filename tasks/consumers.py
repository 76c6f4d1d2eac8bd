"""The websocket that pushes a task's events to its page: `/ws/tasks/<id>/`."""

from __future__ import annotations

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from . import selectors
from .events import group_name


class TaskEventsConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
        user = self.scope.get("user")
        task_id = int(self.scope["url_route"]["kwargs"]["task_id"])
        # Refusals accept first and then close with a code: a close before accepting reaches the
        # browser as a failed handshake (1006), and the page could not tell "log in again" (4401)
        # or "no access" (4404) from a network failure worth retrying.
        if user is None or not user.is_authenticated:
            await self.accept()
            await self.close(code=4401)
            return
        if not await database_sync_to_async(selectors.can_view_task)(user, task_id):
            await self.accept()
            await self.close(code=4404)
            return
        self.group = group_name(task_id)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def task_event(self, message: dict) -> None:
        await self.send_json(message["event"])
