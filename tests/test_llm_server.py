"""Quick checks that the fake LLM server works with the real openai/anthropic clients."""

from __future__ import annotations

import asyncio
import json
import time

import anthropic
import openai
import pytest
from llm_server import LLMTestServer
from pydantic import BaseModel, Field


class Instructions(BaseModel):
    instructions: list[str] = Field(min_length=2, max_length=4)
    difficulty: int = Field(ge=1, le=5)
    topic: str


SCHEMA = Instructions.model_json_schema()


def _openai(srv: LLMTestServer, **kw) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=srv.openai_base_url, api_key="test", **kw)


def _anthropic(srv: LLMTestServer, **kw) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=srv.url, api_key="test", **kw)


def test_openai_plain_and_structured():
    async def main(srv):
        client = _openai(srv)
        r1 = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "Why is the sky blue?"}])
        r2 = await client.chat.completions.create(
            model="m", temperature=0.9, messages=[{"role": "user", "content": "Why is the sky blue?"}])
        s = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "Give instructions"}],
            response_format={"type": "json_schema",
                             "json_schema": {"name": "instr", "schema": SCHEMA, "strict": True}})
        return r1, r2, s

    with LLMTestServer() as srv:
        r1, r2, s = asyncio.run(main(srv))
        assert srv.requests == 3 and srv.served == 3
    text = r1.choices[0].message.content
    assert text.startswith("Here is a careful answer to: Why is the sky blue?")
    assert text != r2.choices[0].message.content
    assert r1.choices[0].finish_reason == "stop" and r1.usage.completion_tokens > 5
    parsed = Instructions.model_validate_json(s.choices[0].message.content)
    assert all(6 <= len(i.split()) <= 15 for i in parsed.instructions)


def test_openai_max_tokens_truncates():
    async def main(srv):
        return await _openai(srv).chat.completions.create(
            model="m", max_tokens=5, messages=[{"role": "user", "content": "hello"}])

    with LLMTestServer() as srv:
        r = asyncio.run(main(srv))
    assert r.choices[0].finish_reason == "length"
    assert len(r.choices[0].message.content.split()) == 5


def test_anthropic_plain_and_tool():
    tool = {"name": "emit", "description": "emit instructions", "input_schema": SCHEMA}

    async def main(srv):
        client = _anthropic(srv)
        plain = await client.messages.create(
            model="claude-x", max_tokens=200, messages=[{"role": "user", "content": "Hi there"}])
        forced = await client.messages.create(
            model="claude-x", max_tokens=500, tools=[tool],
            tool_choice={"type": "tool", "name": "emit"},
            messages=[{"role": "user", "content": "Make instructions"}])
        return plain, forced

    with LLMTestServer() as srv:
        plain, forced = asyncio.run(main(srv))
        assert srv.served == 2
    assert plain.stop_reason == "end_turn"
    assert plain.content[0].text.startswith("Here is a careful answer to: Hi there")
    block = forced.content[0]
    assert forced.stop_reason == "tool_use" and block.type == "tool_use" and block.name == "emit"
    Instructions.model_validate(block.input)


def test_many_distinct_instructions():
    async def main(srv):
        client = _openai(srv)
        fmt = {"type": "json_schema", "json_schema": {"name": "i", "schema": SCHEMA}}
        rs = await asyncio.gather(*[
            client.chat.completions.create(
                model="m", response_format=fmt, seed=i,
                messages=[{"role": "user", "content": "Give instructions"}])
            for i in range(100)])
        return [i for r in rs
                for i in Instructions.model_validate_json(r.choices[0].message.content).instructions]

    with LLMTestServer() as srv:
        instrs = asyncio.run(main(srv))
    assert len(set(instrs)) >= 0.97 * len(instrs)


def test_custom_responder():
    def respond(req, kind):
        return {"answer": "forty-two"} if kind == "anthropic" else "custom text"

    async def main(srv):
        o = await _openai(srv).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "q"}])
        a = await _anthropic(srv).messages.create(
            model="c", max_tokens=50, tools=[{"name": "t", "input_schema": {"type": "object"}}],
            tool_choice={"type": "tool", "name": "t"}, messages=[{"role": "user", "content": "q"}])
        return o, a

    with LLMTestServer(respond=respond) as srv:
        o, a = asyncio.run(main(srv))
    assert o.choices[0].message.content == "custom text"
    assert a.content[0].input == {"answer": "forty-two"}


def test_faults():
    async def rate_limited(srv):
        with pytest.raises(openai.RateLimitError) as ei:
            await _openai(srv, max_retries=0).chat.completions.create(
                model="m", messages=[{"role": "user", "content": "x"}])
        return ei.value

    with LLMTestServer(p429=1.0, retry_after_s=0.01) as srv:
        err = asyncio.run(rate_limited(srv))
        assert err.response.headers["retry-after"] == "0.01"
        assert srv.requests == 1 and srv.served == 0
        srv.reset_counts()
        assert srv.requests == 0

    async def server_error(srv):
        with pytest.raises(anthropic.InternalServerError):
            await _anthropic(srv, max_retries=1).messages.create(
                model="c", max_tokens=10, messages=[{"role": "user", "content": "x"}])

    with LLMTestServer(p500=1.0) as srv:
        asyncio.run(server_error(srv))
        assert srv.requests == 2  # initial + 1 retry

    async def malformed(srv):
        r = await _openai(srv).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}],
            response_format={"type": "json_schema", "json_schema": {"name": "i", "schema": SCHEMA}})
        a = await _anthropic(srv).messages.create(
            model="c", max_tokens=10, tools=[{"name": "t", "input_schema": SCHEMA}],
            tool_choice={"type": "tool", "name": "t"}, messages=[{"role": "user", "content": "x"}])
        return r, a

    with LLMTestServer(p_malformed=1.0) as srv:
        r, a = asyncio.run(malformed(srv))
    with pytest.raises(json.JSONDecodeError):
        json.loads(r.choices[0].message.content)
    assert a.content[0].type == "text"


def test_hang_times_out_and_shutdown_is_fast():
    async def main(srv):
        with pytest.raises(openai.APITimeoutError):
            await _openai(srv, max_retries=0, timeout=0.3).chat.completions.create(
                model="m", messages=[{"role": "user", "content": "x"}])

    start = time.monotonic()
    with LLMTestServer(p_hang=1.0, hang_s=30) as srv:
        asyncio.run(main(srv))
    assert time.monotonic() - start < 5
