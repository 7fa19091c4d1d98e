"""Mattermost/Slack incoming webhooks: ``POST {"text": ...}`` with httpx."""

from __future__ import annotations

import httpx

from dlaas_notifier.ports import DeliveryError, OutMessage

_RETRYABLE = frozenset({408, 425, 429})


class WebhookSender:
    """Posts each message as one incoming-webhook message (markdown text)."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def send(self, address: str, message: OutMessage) -> None:
        """Deliver; 2xx is done, 408/429/5xx and network errors retry, other 4xx do not."""
        payload = {"text": f"**{message.subject}**\n{message.text}"}
        try:
            response = await self.client.post(address, json=payload)
        except httpx.HTTPError as exc:
            raise DeliveryError(f"webhook unreachable: {type(exc).__name__}") from exc
        if response.is_success:
            return
        status = response.status_code
        permanent = (
            status < httpx.codes.INTERNAL_SERVER_ERROR and status not in _RETRYABLE
        )
        # the URL holds the hook's secret: never put it in a reason that gets logged
        raise DeliveryError(f"webhook answered HTTP {status}", permanent=permanent)
