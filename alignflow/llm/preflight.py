"""Before a run sends its first request: is each endpoint there, and does it take the key?

One cheap call per endpoint (the models list). A refused key (401/403) or an endpoint nobody answers is a
ConfigError in one line naming the key's variable or the URL; an endpoint without a models list (404) is fine.
"""
from __future__ import annotations

from alignflow.config import ConfigError, LLMConfig
from alignflow.llm import endpoint
from alignflow.llm.types import ProviderError

PING_TIMEOUT_S = 15.0


def check_endpoints(configs: list[LLMConfig]) -> None:
    seen = set()
    for config in configs:
        where = (config.provider, config.base_url, config.key_env)
        if config.provider == "local" or where in seen:
            continue
        seen.add(where)
        problem = endpoint.run(_problem(config))
        if problem:
            raise ConfigError(problem)


async def _problem(config: LLMConfig) -> str | None:
    url = config.base_url or f"the {config.provider} API"
    try:
        await endpoint.endpoint(config).backend.ping(min(config.timeout_s, PING_TIMEOUT_S))
    except ProviderError as exc:
        if exc.status in (401, 403):
            return f"{url} refused the API key in {config.key_env} (HTTP {exc.status}): check the key and its variable"
        if exc.status is None:
            return f"nothing answers at {url} ({exc}): check llm.base_url and that the server is running"
    return None
