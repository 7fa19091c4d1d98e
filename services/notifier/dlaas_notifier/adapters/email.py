"""E-mail over SMTP (aiosmtplib); failures classified for the dispatcher's retries."""

from __future__ import annotations

from email.message import EmailMessage

import aiosmtplib

from dlaas_notifier.ports import DeliveryError, OutMessage
from dlaas_notifier.settings import SmtpSettings

_PERMANENT_FROM = 500  # SMTP 5xx: the server refuses for good (bad address, policy)


class SmtpSender:
    """Sends one plain-text e-mail per message through the configured relay."""

    def __init__(self, settings: SmtpSettings) -> None:
        self.settings = settings

    def _compose(self, address: str, message: OutMessage) -> EmailMessage:
        mail = EmailMessage()
        mail["From"] = self.settings.sender
        mail["To"] = address
        mail["Subject"] = message.subject
        mail.set_content(message.text)
        return mail

    async def send(self, address: str, message: OutMessage) -> None:
        """Deliver; a 5xx answer is permanent, anything else (down, 4xx, timeout) transient."""
        s = self.settings
        try:
            await aiosmtplib.send(
                self._compose(address, message),
                hostname=s.host,
                port=s.port,
                username=s.username,
                password=None if s.password is None else s.password.get_secret_value(),
                start_tls=s.starttls,
                use_tls=s.use_tls,
                timeout=s.timeout_s,
            )
        except aiosmtplib.SMTPResponseException as exc:
            raise DeliveryError(
                f"SMTP {exc.code}: {exc.message}", permanent=exc.code >= _PERMANENT_FROM
            ) from exc
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise DeliveryError(f"SMTP unreachable: {type(exc).__name__}: {exc}") from exc
