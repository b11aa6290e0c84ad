"""Before a run sends its first request: is each endpoint there, does it take the key, and does it answer?

`check_endpoints`: a base_url that names an API path, not the API's root, is refused from the URL alone; then one
cheap call per endpoint (the models list): a refused key (401/403) or an endpoint nobody answers is a ConfigError
in one line naming the key's variable or the URL; an endpoint without a models list (404) is fine so far.

`prove_endpoints`: a models list that names the model proves the path (completions are its sibling) and the model;
one that does not (404, a page that is no list, a list without the model) proves neither, so the endpoint gets one
minimal real call (one token, with the first model the run asks of it) unless it has answered before: in this
process, or for this run (the digests the run's record holds). Its refusal is EndpointRefused, the same line a run
that meets it later stops with. No list proves the key may make completions, and the run's other models are not
called ahead (a review may stand before they are paid for): the first request to an endpoint that never answered
goes alone, so a key, path or model it refuses costs a few requests, then the run stops (`llm.refused`).
Batch-mode endpoints are not called live (a refused batch stops the run at its first submission); the embedded
model needs none of this.
"""
from __future__ import annotations

from collections.abc import Collection
from urllib.parse import urlsplit

from alignflow.config import ConfigError, LLMConfig
from alignflow.llm import endpoint
from alignflow.llm.client import LLM
from alignflow.llm.refused import shown_url
from alignflow.llm.remote import redact
from alignflow.llm.types import ProviderError

PING_TIMEOUT_S = 15.0
API_PATHS = ("/chat/completions", "/completions", "/messages", "/models")  # what the clients add to base_url


def check_endpoints(configs: list[LLMConfig]) -> None:
    seen = set()
    for config in configs:
        where = (config.provider, config.base_url, config.key_env)
        if config.provider == "local" or where in seen:
            continue
        seen.add(where)
        problem = _path_problem(config) or endpoint.run(_problem(config))
        if problem:
            raise ConfigError(problem)


def prove_endpoints(configs: list[LLMConfig], proven: Collection[str] = ()) -> list[str]:
    """One minimal call to each live endpoint not known to answer whose models list does not name its model; returns
    the digests of the endpoints known to answer. A run starts here, so a stop an earlier run of this process met
    on an endpoint is forgotten (and met again, if the endpoint still refuses)."""
    first: dict[tuple, LLMConfig] = {}
    answering: list[str] = []
    for config in configs:
        if config.provider == "local" or config.mode == "batch":
            continue
        where = endpoint.endpoint(config)
        where.refusals.reset()
        first.setdefault((config.provider, config.base_url, config.key_env), config)
        if (where.proven or where.digest in proven) and where.digest not in answering:
            answering.append(where.digest)
    for config in first.values():
        where = endpoint.endpoint(config)
        if where.digest in answering or config.model_name in endpoint.run(_listed(config)):
            continue
        endpoint.run(LLM(config).prove())
        if where.proven:
            answering.append(where.digest)
    return answering


async def _listed(config: LLMConfig) -> list[str]:
    """The models the endpoint's models list names; none when it has no list (or no list answers)."""
    try:
        return await endpoint.endpoint(config).backend.ping(min(config.timeout_s, PING_TIMEOUT_S))
    except ProviderError:
        return []


def _path_problem(config: LLMConfig) -> str | None:
    """A base_url that ends in a path the client adds itself: every request would go to a URL that is not there."""
    path = urlsplit(config.base_url or "").path.rstrip("/")
    if config.provider == "anthropic" and path.endswith("/v1"):
        return (f"llm.base_url {redact(config.base_url)} ends in /v1: for anthropic it must be the server's root; "
                "the client adds /v1/messages itself")
    suffix = next((p for p in API_PATHS if path.endswith(p)), None)
    if suffix is None:
        return None
    root = "/v1" if config.provider == "openai" else "the server's root"
    return (f"llm.base_url {redact(config.base_url)} ends in {suffix}: it must end at {root}; the client adds "
            f"{suffix} itself")


async def _problem(config: LLMConfig) -> str | None:
    url = shown_url(config)
    try:
        await endpoint.endpoint(config).backend.ping(min(config.timeout_s, PING_TIMEOUT_S))
    except ProviderError as exc:
        if exc.status in (401, 403):
            return f"{url} refused the API key in {config.key_env} (HTTP {exc.status}): check the key and its variable"
        if exc.status is None:
            return f"nothing answers at {url} ({exc}): check llm.base_url and that the server is running"
    return None
