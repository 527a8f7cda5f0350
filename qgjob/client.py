"""The HTTP client the CLI uses."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec

from eventstore.errors import QgjobError


def _httpx() -> Any:
    """httpx, imported on first use: ``qgjob --help`` starts faster without it."""
    import httpx

    return httpx


class ClientError(QgjobError):
    """The server rejected the request."""

    def __init__(self, message: str, *, status: int, body: dict[str, Any]) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class Unreachable(QgjobError):
    """The qgjob server could not be reached."""


class Client:
    def __init__(self, url: str, token: str | None, *, timeout: float = 30.0) -> None:
        headers = {"user-agent": "qgjob-cli"}
        if token:
            headers["authorization"] = f"Bearer {token}"
        self.url = url.rstrip("/")
        self.http = _httpx().Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        ok: tuple[int, ...] = (200, 201),
    ) -> tuple[int, dict[str, Any]]:
        content = msgspec.json.encode(json) if json is not None else None
        hdrs = {"content-type": "application/json"} if content is not None else {}
        hdrs.update(headers or {})
        try:
            response = self.http.request(method, path, content=content, params=params, headers=hdrs)
        except _httpx().TransportError as exc:
            raise Unreachable(f"cannot reach the qgjob server at {self.url}: {exc}") from exc
        try:
            body = msgspec.json.decode(response.content) if response.content else {}
        except msgspec.DecodeError:
            body = {"error": "bad_response", "message": response.text[:200]}
        if response.status_code not in ok:
            message = body.get("message") if isinstance(body, dict) else None
            raise ClientError(
                message or f"HTTP {response.status_code}",
                status=response.status_code,
                body=body if isinstance(body, dict) else {},
            )
        return response.status_code, body

    # --- the API, one method per endpoint ------------------------------------

    def submit(self, body: dict[str, Any], *, idempotency_key: str | None = None) -> tuple[int, dict[str, Any]]:
        headers = {"idempotency-key": idempotency_key} if idempotency_key else None
        return self.request("POST", "/v1/jobs", json=body, headers=headers, ok=(201, 409))

    def job(self, job_id: str) -> dict[str, Any]:
        return self.request("GET", f"/v1/jobs/{job_id}")[1]

    def jobs(self, **params: Any) -> dict[str, Any]:
        return self.request("GET", "/v1/jobs", params={k: v for k, v in params.items() if v is not None})[1]

    def run(self, run_id: str) -> dict[str, Any]:
        return self.request("GET", f"/v1/runs/{run_id}")[1]

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self.request("POST", f"/v1/jobs/{job_id}/cancel")[1]

    def cancel_run(self, run_id: str) -> dict[str, Any]:
        return self.request("POST", f"/v1/runs/{run_id}/cancel")[1]

    def events(self, job_id: str) -> dict[str, Any]:
        return self.request("GET", f"/v1/jobs/{job_id}/events")[1]

    def run_events(self, run_id: str) -> dict[str, Any]:
        return self.request("GET", f"/v1/runs/{run_id}/events")[1]

    def tail(self, **params: Any) -> Iterator[tuple[str, dict[str, Any]]]:
        """``(event type, event)`` from ``GET /v1/tail`` as they come; the first is
        ``("ready", {...})``. Ends when the server closes the stream."""
        query = [(k, v) for k, v in params.items() if v is not None and not isinstance(v, (list, tuple))]
        query += [(k, item) for k, v in params.items() if isinstance(v, (list, tuple)) for item in v]
        connected = False
        try:
            timeout = _httpx().Timeout(30.0, read=None)
            with self.http.stream("GET", "/v1/tail", params=query, timeout=timeout) as response:
                connected = True
                if response.status_code != 200:
                    response.read()
                    raise _error(response)
                from qgjob.sse import Parser  # httpx is loaded by now

                for event in Parser().parse(response.iter_lines()):
                    yield event.event, event.json()
        except _httpx().TransportError as exc:
            what = "lost the connection to" if connected else "cannot reach"
            raise Unreachable(f"{what} the qgjob server at {self.url}: {exc}") from exc

    def logs(self, job_id: str, attempt: int | None = None) -> bytes:
        params = {"attempt": attempt} if attempt is not None else None
        try:
            response = self.http.get(f"/v1/jobs/{job_id}/logs", params=params)
        except _httpx().TransportError as exc:
            raise Unreachable(f"cannot reach the qgjob server at {self.url}: {exc}") from exc
        if response.status_code != 200:
            raise _error(response)
        return response.content

    def agents(self) -> dict[str, Any]:
        return self.request("GET", "/v1/agents")[1]

    def metrics(self) -> dict[str, Any]:
        return self.request("GET", "/v1/metrics")[1]

    def create_token(self, org_id: str) -> dict[str, Any]:
        return self.request("POST", "/v1/tokens", json={"org_id": org_id})[1]

    def ready(self) -> bool:
        try:
            return self.http.get("/readyz").status_code == 200
        except _httpx().TransportError:
            return False


def _error(response: Any) -> ClientError:
    """The error an unsuccessful answer stands for, with the server's message."""
    try:
        body = msgspec.json.decode(response.content)
    except msgspec.DecodeError:
        body = {"message": response.text[:200]}
    if not isinstance(body, dict):
        body = {}
    return ClientError(body.get("message") or f"HTTP {response.status_code}", status=response.status_code, body=body)
