"""Tell a running ``loopline serve`` to check the champion alias now (for the promotion task or the CLI).

Optional: every worker also polls the alias. A failure to notify is logged and returned, never raised, so a
promotion never fails because the service is down.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


def notify_reload(base_url: str, token: str, timeout: float = 10.0) -> dict[str, Any] | None:
    """POST /admin/reload; the answer (the worker's champion check) or None when the service did not answer."""
    import requests

    try:
        answer = requests.post(
            f"{base_url.rstrip('/')}/admin/reload",
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
        )
        answer.raise_for_status()
    except requests.RequestException as exc:
        log.warning(
            "could not notify the scoring service at %s: %s (it polls the alias anyway)", base_url, exc
        )
        return None
    return answer.json()
