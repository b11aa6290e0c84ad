"""Smoke test of the embedded model: real generation, grammar-constrained JSON and micro-batching, in one load."""
import asyncio

import pytest
from pydantic import BaseModel, Field

from alignflow.llm.local import LocalBackend
from alignflow.llm.types import Request


class Rating(BaseModel):
    rating: int = Field(ge=1, le=5)
    rationale: str


def _ask(text: str, **kwargs) -> Request:
    return Request(messages=[{"role": "user", "content": text}], **kwargs)


@pytest.mark.slow
def test_local_model_generates_structured_and_batched():
    # One test, so the ~20 s model load is paid once.
    backend = LocalBackend(max_batch=4)

    async def scenario():
        plain = await backend.complete(_ask("Name one colour.", temperature=0, max_tokens=24))
        structured = await backend.complete(
            _ask("Rate this answer from 1 to 5: 'Paris is the capital of France.'", schema=Rating, temperature=0, max_tokens=96)
        )
        topics = ["cats", "the sea", "the history of the Roman empire", "why the sky looks blue at noon"]
        burst = await asyncio.gather(
            *(backend.complete(_ask(f"Write one sentence about {t}.", temperature=0.7, max_tokens=24, sample=i)) for i, t in enumerate(topics))
        )
        return plain, structured, burst

    plain, structured, burst = asyncio.run(scenario())

    assert plain.text.strip()
    assert plain.input_tokens > 0 and 0 < plain.output_tokens <= 24
    assert plain.finish_reason in {"stop", "length"}

    parsed = Rating.model_validate_json(structured.text)
    assert 1 <= parsed.rating <= 5

    assert backend.batch_sizes == [1, 1, 4]  # the four concurrent requests shared one generate call
    assert all(c.text.strip() and c.output_tokens > 0 for c in burst)
    lengths = [c.input_tokens for c in burst]
    assert lengths == sorted(lengths) and lengths[0] < lengths[-1]  # counted without the left padding
