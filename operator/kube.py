"""A thin async Kubernetes REST client over httpx, working on plain dicts.

Credentials come from the `kubernetes` package's loaders (in-cluster service account first, then the
kubeconfig in $KUBECONFIG or ~/.kube/config), so it connects wherever Kopf itself does.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any

import httpx

from mili.operator.spec import GROUP, PLURAL, VERSION

MERGE_PATCH = "application/merge-patch+json"


class ApiError(Exception):
    """A Kubernetes API call that failed; ``status`` is the HTTP status (0: no answer)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def is_refusal(self) -> bool:
        """A 4xx that sending the same request again cannot fix (an invalid object, a forbidden
        write); 404, 409 (conflict) and 429 (too many requests) are worth a retry, like 5xx and 0."""
        return 400 <= self.status < 500 and self.status not in (404, 409, 429)


def deployment_path(namespace: str, name: str | None = None) -> str:
    base = f"/apis/apps/v1/namespaces/{namespace}/deployments"
    return f"{base}/{name}" if name else base


def pod_path(namespace: str) -> str:
    return f"/api/v1/namespaces/{namespace}/pods"


def service_path(namespace: str, name: str | None = None) -> str:
    base = f"/api/v1/namespaces/{namespace}/services"
    return f"{base}/{name}" if name else base


def network_policy_path(namespace: str, name: str | None = None) -> str:
    base = f"/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies"
    return f"{base}/{name}" if name else base


def service_account_path(namespace: str, name: str | None = None) -> str:
    base = f"/api/v1/namespaces/{namespace}/serviceaccounts"
    return f"{base}/{name}" if name else base


def role_path(namespace: str, name: str | None = None) -> str:
    base = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/roles"
    return f"{base}/{name}" if name else base


def role_binding_path(namespace: str, name: str | None = None) -> str:
    base = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/rolebindings"
    return f"{base}/{name}" if name else base


def milideployment_path(namespace: str, name: str, subresource: str | None = None) -> str:
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}"
    return f"{path}/{subresource}" if subresource else path


class KubeClient:
    """GET / POST / merge-PATCH of namespaced objects as dicts."""

    def __init__(
        self,
        base_url: str,
        *,
        authorization: Callable[[], str | None] = lambda: None,
        verify: ssl.SSLContext | bool = True,
        timeout: float = 30.0,
    ) -> None:
        self._authorization = authorization
        self._http = httpx.AsyncClient(base_url=base_url, verify=verify, timeout=timeout)

    @classmethod
    def from_environment(cls) -> KubeClient:
        """Connect with the in-cluster service account, or else the current kubeconfig context."""
        from kubernetes import client, config  # heavy import, only where a connection is made

        configuration = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException:
            config.load_kube_config(client_configuration=configuration)
        verify: ssl.SSLContext | bool = bool(configuration.verify_ssl)
        if configuration.verify_ssl and (configuration.ssl_ca_cert or configuration.cert_file):
            context = ssl.create_default_context(cafile=configuration.ssl_ca_cert)
            if configuration.cert_file:
                context.load_cert_chain(configuration.cert_file, configuration.key_file)
            verify = context
        return cls(
            configuration.host,
            # Called per request: the loaders' refresh hooks re-read rotated service-account tokens.
            authorization=lambda: configuration.get_api_key_with_prefix("authorization"),
            verify=verify,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(
        self, method: str, path: str, body: Any = None, content_type: str | None = None
    ) -> Any:
        headers = {"Accept": "application/json"}
        token = self._authorization()
        if token:
            headers["Authorization"] = token
        if content_type:
            headers["Content-Type"] = content_type
        try:
            response = await self._http.request(method, path, json=body, headers=headers)
        except httpx.HTTPError as error:
            raise ApiError(0, type(error).__name__, f"{method} {path}: {error}") from error
        if response.status_code >= 400:
            try:
                payload = response.json()
            except ValueError:
                payload = {}
            message = payload.get("message") if isinstance(payload, dict) else None
            reason = payload.get("reason") if isinstance(payload, dict) else None
            raise ApiError(
                response.status_code, reason or response.reason_phrase, message or f"{method} {path}"
            )
        return response.json()

    async def get(self, path: str) -> dict[str, Any] | None:
        """The object at ``path``, or None when it does not exist."""
        try:
            return await self._request("GET", path)
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    async def create(self, collection_path: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self._request("POST", collection_path, body)

    async def merge_patch(self, path: str, patch: dict[str, Any]) -> dict[str, Any]:
        return await self._request("PATCH", path, patch, MERGE_PATCH)

    async def delete(self, path: str) -> None:
        await self._request("DELETE", path)
