"""A fake LLM HTTP server for tests.

Speaks the OpenAI chat-completions format (``POST /v1/chat/completions``) and the
Anthropic messages format (``POST /v1/messages``) well enough for the real
``openai`` and ``anthropic`` clients, with deterministic, request-dependent
answers and seeded fault injection (429, 500, hangs, malformed JSON).
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

Responder = Callable[[dict, str], "str | dict | None"]

# --------------------------------------------------------------------------- vocabulary

TOPICS = """
photosynthesis volcanoes blockchain compilers vaccines tides inflation encryption glaciers
democracy recursion gravity earthquakes sourdough composting meditation jazz origami
beekeeping astronomy typography cryptography mitochondria rainforests hurricanes satellites
telescopes batteries magnetism electricity evolution genetics antibiotics nutrition sleep
memory language grammar poetry chess calculus probability statistics geometry algebra
friction buoyancy aerodynamics bridges skyscrapers plumbing irrigation fermentation cheese
coffee tea chocolate bread pasta spices knitting pottery woodworking gardening bonsai
migration hibernation camouflage coral plankton whales dolphins octopuses wolves honeybees
ants mushrooms lichens ferns cacti deserts tundra wetlands rivers deltas canyons caves
auroras eclipses comets asteroids exoplanets nebulae quasars neutrinos lasers holograms
semiconductors transistors databases caching routers firewalls containers kubernetes
microservices unicode regex spreadsheets budgeting mortgages taxes insurance pensions
negotiation leadership teamwork feedback interviews resumes procrastination habits
journaling minimalism recycling solar windmills geothermal hydropower nuclear fusion
carbon forests soil erosion drought monsoons climate weather clouds lightning rainbows
opera ballet sculpture painting photography cinema animation podcasts libraries museums
archaeology pyramids aqueducts castles lighthouses railways canals sailing navigation
maps compasses clocks calendars alphabets numerals abacus printing newspapers telegraphs
radio television smartphones emojis passwords backups algorithms sorting hashing graphs
trees queues stacks pointers threads deadlocks latency bandwidth compression checksums
vitamins proteins enzymes hormones neurons reflexes muscles bones lungs kidneys digestion
empathy gratitude curiosity resilience humor storytelling debate rhetoric ethics logic
""".split()

VERBS = """explain describe summarize compare outline illustrate analyze evaluate discuss
clarify justify critique predict contrast demonstrate""".split()

AUDIENCES = [
    "a beginner", "a child", "a teenager", "a busy manager", "a retired engineer",
    "a new student", "a skeptical scientist", "a curious tourist", "a small business owner",
    "a nurse", "a farmer", "a poet", "a software developer", "a history teacher",
    "a first-time voter",
]

ADJECTIVES = """simple vivid concise playful rigorous practical friendly detailed surprising
memorable honest balanced concrete creative thoughtful""".split()

COUNTS = ["two", "three", "four", "five", "six", "seven"]

TEMPLATES = [
    "{Verb} how {topic} works in {adj} terms for {audience}.",
    "Write a {adj} short story that involves {topic} and {topic2}.",
    "List {count} common misconceptions {audience} has about {topic}.",
    "{Verb} the relationship between {topic} and {topic2} for {audience}.",
    "Give {count} practical tips for {audience} learning about {topic}.",
    "Draft a {adj} email inviting {audience} to a workshop on {topic}.",
    "Compose a haiku sequence about {topic} meeting {topic2}.",
    "What would happen to {topic} if {topic2} suddenly disappeared tomorrow?",
    "Create a quiz with {count} questions about {topic} for {audience}.",
    "Design a weekend project combining {topic} with {topic2}.",
    "Summarize the history of {topic} in {count} {adj} sentences.",
    "Argue for and against funding {topic} research as {audience}.",
    "Describe a day for someone who studies {topic} and {topic2}.",
    "Translate the core idea of {topic} into an analogy about {topic2}.",
    "Suggest {count} {adj} names for a startup focused on {topic}.",
    "Write a dialogue where {audience} asks an expert about {topic} and {topic2}.",
    "{Verb} why {topic} matters for everyday life and {topic2}.",
    "Plan a {adj} lesson about {topic} that uses {topic2} as an example.",
    "Identify {count} ethical questions raised by modern {topic} and {topic2}.",
    "Rewrite a textbook paragraph about {topic} in a {adj} style for {audience}.",
    "Propose an experiment that tests an idea linking {topic} and {topic2}.",
    "Outline a {adj} roadmap for {audience} mastering {topic} this year.",
    "Compare {topic} and {topic2} using {count} concrete criteria.",
    "Write a {adj} paragraph convincing {audience} to care about {topic}.",
    "Explain the biggest open problems in {topic} to {audience} without jargon.",
    "Create a {adj} checklist for {audience} troubleshooting {topic}.",
    "Describe how {topic} might change over the next {count} decades because of {topic2}.",
    "Tell a {adj} fable whose moral is connected to {topic} and {topic2}.",
    "Invent a board game teaching {audience} about {topic} and {topic2}.",
    "Summarize the key tradeoffs of {topic} versus {topic2} in a {adj} table.",
]

# Composed instructions: an ask, a subject, then optionally a setting and a form. Most pairs share at most
# one part, so a run can keep 1,000+ instructions that are novel under ROUGE-L 0.7 (Self-Instruct's bound).
ASKS = [
    "Explain", "Describe", "Summarize", "Write a short poem about", "Write a blog post about", "Give advice on",
    "Create a lesson plan on", "Tell a story about", "List surprising facts about", "Debunk myths about",
    "Draft a speech on", "Write a limerick about", "Outline a podcast episode on", "Write a song verse about",
    "Plan a workshop on", "Write an op-ed on", "Prepare trivia questions on", "Create a mnemonic for",
    "Write a product pitch about", "Critique a common view of", "Propose a study of", "Write a diary entry about",
    "Brainstorm startup ideas about", "Write a riddle about", "Give a pep talk about", "Compose a letter about",
    "Design a board game about", "Write a recipe card inspired by", "Make a glossary for", "Write a movie plot about",
]

SUBJECTS = [
    "the inner workings of {topic}", "the history of {topic}", "the link between {topic} and {topic2}",
    "{topic} versus {topic2}", "the future of {topic}", "common mistakes with {topic}", "the economics of {topic}",
    "the science behind {topic}", "why {topic} matters", "ethical questions about {topic}", "a world without {topic}",
    "careers in {topic}", "{topic} in ancient times", "the basics of {topic}", "hidden costs of {topic}",
    "surprising uses of {topic}", "{topic} seen through {topic2}", "safety rules for {topic}",
    "famous failures in {topic}", "everyday {topic}", "{topic} at home", "{topic} in cities", "the math of {topic}",
    "a beginner's kit for {topic}", "how {topic} shapes {topic2}", "local {topic} projects", "{topic} on a budget",
    "myths and facts on {topic}", "{topic} for the next decade", "the language of {topic}",
]

SETTINGS = [
    "for {audience}", "aimed at {audience}", "to help {audience}", "so {audience} understands",
    "for {audience} in a hurry", "for retirees", "for kids aged {count}", "for an online forum",
    "for a school newsletter", "for coworkers", "for a village council", "for hospital staff", "for your grandmother",
    "for a science fair", "for new parents", "for a job interview", "for a dinner party", "for a radio show",
    "for visiting students", "for a book club",
]

FORMS = [
    "in {count} sentences", "using a {adj} tone", "as a numbered list", "in under {words} words",
    "with one concrete example", "as a short dialogue", "without technical jargon", "in the style of a news report",
    "using a cooking analogy", "as flashcards", "with a {adj} twist", "in the second person", "as a FAQ",
    "using everyday words", "ending with a question", "with {count} key takeaways", "as a {adj} thread",
    "in a formal register", "with a sports analogy", "in plain English", "as a table", "with rhymes",
    "in {count} bullet points", "from a skeptic's view", "with citations", "as a checklist", "in a {adj} voice",
    "with a personal anecdote", "as a comic strip script", "in the present tense", "with a catchy title",
    "with pros and cons", "as a timeline", "with a quiz at the end", "in haiku form", "as an analogy",
]

WORD_LIMITS = ["50", "80", "100", "120", "150", "200", "250", "300"]

FILLER = [
    "The key idea is to start from first principles and build up gradually.",
    "A concrete example usually makes the abstract part much easier to grasp.",
    "It helps to separate what is known with confidence from what is still debated.",
    "Small experiments are often the fastest way to check an intuition.",
    "Several factors interact here, so it is worth looking at each in turn.",
    "In practice, the simplest explanation tends to hold up surprisingly well.",
    "Keep in mind the common pitfalls and the situations where this breaks down.",
    "Experts often disagree on the details, but the overall picture is clear.",
    "A useful analogy compares the process to a well organised kitchen.",
    "The consequences become more visible over longer periods of time.",
    "Careful measurement is what turns a hunch into reliable knowledge.",
    "Finally, it is worth revisiting the question once the basics feel familiar.",
]


def _digest(*parts: Any) -> int:
    """Stable 64-bit hash of JSON-serialisable parts."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "big")


def make_instruction(rnd: random.Random) -> str:
    """A realistic-ish instruction sentence of 6-15 words: a fixed template, or composed from parts."""
    topic, topic2 = rnd.sample(TOPICS, 2)
    slots = {"Verb": rnd.choice(VERBS).capitalize(), "topic": topic, "topic2": topic2, "adj": rnd.choice(ADJECTIVES),
             "audience": rnd.choice(AUDIENCES), "count": rnd.choice(COUNTS), "words": rnd.choice(WORD_LIMITS)}
    if rnd.random() < 0.15:
        return rnd.choice(TEMPLATES).format(**slots)
    ask, subject, setting, form = rnd.choice(ASKS), rnd.choice(SUBJECTS), rnd.choice(SETTINGS), rnd.choice(FORMS)
    for parts in ([ask, subject, setting, form], [ask, subject, setting], [ask, subject, form], [ask, subject]):
        text = " ".join(parts).format(**slots)
        if len(text.split()) <= 15:
            break
    return text + "."


def make_phrase(rnd: random.Random, name: str = "") -> str:
    """A short varied string for a generic string field."""
    if any(k in name.lower() for k in ("instruction", "question", "prompt", "task")):
        return make_instruction(rnd)
    if any(k in name.lower() for k in ("answer", "response", "output", "text", "reason", "explanation")):
        topic = rnd.choice(TOPICS)
        return f"The answer about {topic} is {rnd.choice(ADJECTIVES)}. {rnd.choice(FILLER)}"
    return f"{rnd.choice(ADJECTIVES)} {rnd.choice(TOPICS)} {rnd.choice(TOPICS)}"


# --------------------------------------------------------------------------- schema -> JSON

def generate_from_schema(schema: dict, rnd: random.Random, name: str = "",
                         root: dict | None = None, depth: int = 0) -> Any:
    """Generate a value valid against a (simple) JSON schema."""
    root = root if root is not None else schema
    if depth > 12:
        return None
    if "$ref" in schema:
        target: Any = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            target = target[part]
        return generate_from_schema(target, rnd, name, root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return rnd.choice(schema["enum"])
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return generate_from_schema(schema[key][0], rnd, name, root, depth + 1)
    if "allOf" in schema:
        merged: dict = {}
        for sub in schema["allOf"]:
            merged.update(sub)
        merged.update({k: v for k, v in schema.items() if k != "allOf"})
        return generate_from_schema(merged, rnd, name, root, depth + 1)

    typ = schema.get("type")
    if isinstance(typ, list):
        typ = next((t for t in typ if t != "null"), "null")
    if typ is None:
        typ = "object" if "properties" in schema else "string"

    if typ == "object":
        props = schema.get("properties", {})
        return {k: generate_from_schema(v, rnd, k, root, depth + 1) for k, v in props.items()}
    if typ == "array":
        lo = schema.get("minItems", 1)
        hi = schema.get("maxItems", max(lo, 3))
        n = rnd.randint(lo, max(lo, hi))
        items = schema.get("items", {"type": "string"})
        item_name = name[:-1] if name.endswith("s") else name
        return [generate_from_schema(items, rnd, item_name, root, depth + 1) for _ in range(n)]
    if typ == "string":
        s = make_phrase(rnd, name)
        lo, hi = schema.get("minLength", 0), schema.get("maxLength")
        while len(s) < lo:
            s += " " + rnd.choice(TOPICS)
        return s[:hi] if hi is not None else s
    if typ in ("integer", "number"):
        lo = schema.get("minimum", schema.get("exclusiveMinimum", 0))
        hi = schema.get("maximum", schema.get("exclusiveMaximum", lo + 100))
        if "exclusiveMinimum" in schema and "minimum" not in schema:
            lo += 1 if typ == "integer" else 1e-6
        if "exclusiveMaximum" in schema and "maximum" not in schema:
            hi -= 1 if typ == "integer" else 1e-6
        if typ == "integer":
            return rnd.randint(int(lo), int(max(lo, hi)))
        return round(rnd.uniform(lo, max(lo, hi)), 4)
    if typ == "boolean":
        return rnd.random() < 0.5
    return None


# --------------------------------------------------------------------------- request helpers

def _text_of(content: Any) -> str:
    """Flatten OpenAI/Anthropic message content (str or list of parts) into text."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(_text_of(p.get("text", "")) if isinstance(p, dict) else str(p)
                        for p in content)
    return ""


def _last_user_text(req: dict) -> str:
    for msg in reversed(req.get("messages") or []):
        if msg.get("role") == "user":
            return _text_of(msg.get("content"))
    return ""


def _prompt_words(req: dict) -> int:
    words = len(_text_of(req.get("system", "")).split())
    for msg in req.get("messages") or []:
        words += len(_text_of(msg.get("content")).split())
    return words


def _structured_schema(req: dict, kind: str) -> tuple[dict, str] | None:
    """(schema, name) if the request asks for structured output, else None."""
    if kind == "openai":
        fmt = req.get("response_format") or {}
        if fmt.get("type") == "json_schema":
            js = fmt.get("json_schema") or {}
            return js.get("schema") or {"type": "object"}, js.get("name", "output")
        if fmt.get("type") == "json_object":
            return {"type": "object", "properties": {"answer": {"type": "string"}}}, "output"
        return None
    choice = req.get("tool_choice") or {}
    if choice.get("type") == "tool":
        for tool in req.get("tools") or []:
            if tool.get("name") == choice.get("name"):
                return tool.get("input_schema") or {"type": "object"}, tool["name"]
        return {"type": "object"}, choice.get("name", "tool")
    return None


def default_text(req: dict, rnd: random.Random) -> str:
    """Deterministic multi-sentence answer derived from the last user message."""
    head = " ".join(_last_user_text(req).split())[:60]
    sentences = rnd.sample(FILLER, 4)
    topic = rnd.choice(TOPICS)
    return (f"Here is a careful answer to: {head}. " + " ".join(sentences)
            + f" One way to remember this is to think about {topic}.")


# --------------------------------------------------------------------------- server

class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    def _refused(self, owner: "LLMTestServer", kind: str) -> bool:
        """With `api_key` set, a request with another key gets a 401 quoting it masked, as OpenAI's does."""
        if owner.api_key is None:
            return False
        given = self.headers.get("x-api-key") or self.headers.get("Authorization", "").removeprefix("Bearer ")
        if given == owner.api_key:
            return False
        masked = given[:4] + "*" * max(len(given) - 8, 0) + given[-4:]
        self._error(kind, 401, f"Incorrect API key provided: {masked}. You can find your API key at "
                               "https://platform.openai.com/account/api-keys.")
        return True

    def do_GET(self) -> None:  # noqa: N802
        owner = self.server.owner
        path = self.path.split("?", 1)[0].rstrip("/")
        parts = path.strip("/").split("/")
        if self._refused(owner, "anthropic" if self.headers.get("x-api-key") else "openai"):
            return
        if owner.strict_paths and parts[:1] != ["v1"]:
            return self._send(404, {"error": {"message": f"Invalid URL (GET {path})", "type": "invalid_request_error",
                                              "param": None, "code": None}})
        if parts == ["v1", "models"] and owner.models is not None:
            return self._send(200, {"object": "list", "has_more": False, "data": [
                {"id": m, "object": "model", "created": 0, "owned_by": "test", "type": "model", "display_name": m,
                 "created_at": "2026-01-01T00:00:00Z"} for m in owner.models]})
        if parts == ["v1", "models"]:
            return self._send(200, {"object": "list", "data": [{"id": "gen-model", "object": "model", "created": 0,
                                                                "owned_by": "test", "type": "model",
                                                                "display_name": "gen-model",
                                                                "created_at": "2026-01-01T00:00:00Z"}],
                                    "has_more": False, "first_id": "gen-model", "last_id": "gen-model"})
        if parts in (["v1", "batches"], ["v1", "messages", "batches"]):
            return self._send(200, owner._batch_list("openai" if parts == ["v1", "batches"] else "anthropic",
                                                     parse_qs(urlsplit(self.path).query)))
        if parts[:2] == ["v1", "batches"] and len(parts) == 3:
            found = owner.batches.get(parts[2])
            return self._send(200, owner._openai_batch(found)) if found else self._send(404, {"error": {"message": "no such batch"}})
        if parts[:2] == ["v1", "files"] and len(parts) == 4 and parts[3] == "content":
            content = owner.files.get(parts[2])
            return self._send_bytes(content) if content is not None else self._send(404, {"error": {"message": "no such file"}})
        if parts[:3] == ["v1", "messages", "batches"] and len(parts) >= 4:
            found = owner.batches.get(parts[3])
            if not found:
                return self._send(404, {"type": "error", "error": {"type": "not_found_error", "message": "no such batch"}})
            if len(parts) == 5 and parts[4] == "results":
                return self._send_bytes(owner._anthropic_results(found))
            return self._send(200, owner._anthropic_batch(found))
        self._send(200, {"status": "ok"})

    def _send_bytes(self, data: bytes) -> None:
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            self.close_connection = True

    def _batch_api(self, owner: "LLMTestServer", path: str, raw: bytes) -> None:
        """The Batch APIs: OpenAI's files and batches, Anthropic's message batches."""
        if path == "/v1/files":
            self._send(200, owner._upload(self.headers.get("Content-Type", ""), raw))
        elif path == "/v1/batches":
            batch = owner._create_batch("openai", json.loads(raw))
            owner._stop.wait(owner.batch_create_delay_s)  # made, not yet answered: a client killed now has no id
            self._send(200, owner._openai_batch(batch))
        elif path == "/v1/messages/batches":
            batch = owner._create_batch("anthropic", json.loads(raw))
            owner._stop.wait(owner.batch_create_delay_s)
            self._send(200, owner._anthropic_batch(batch))
        else:
            self._send(404, {"error": {"message": f"unknown path {path}"}})

    def do_POST(self) -> None:  # noqa: N802
        owner = self.server.owner
        owner._count("posts")
        path = self.path.split("?", 1)[0].rstrip("/")
        if path in ("/v1/files", "/v1/batches", "/v1/messages/batches"):
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b"{}"
            if owner.refuse_batches is not None:
                owner._count("refused")
                return self._error("anthropic" if "messages" in path else "openai", *owner.refuse_batches)
            return self._batch_api(owner, path, raw)
        if path in ("/v1/chat/completions", "/chat/completions") and not (owner.strict_paths and path[:3] != "/v1"):
            kind = "openai"
        elif path in ("/v1/messages", "/messages") and not (owner.strict_paths and path[:3] != "/v1"):
            kind = "anthropic"
        elif owner.strict_paths:
            owner._count("refused")
            self._send(404, {"error": {"message": f"Invalid URL (POST {path})", "type": "invalid_request_error",
                                       "param": None, "code": None}})
            return
        else:
            self._send(404, {"error": {"message": f"unknown path {self.path}"}})
            return
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b"{}"
        try:
            req = json.loads(raw or b"{}")
        except ValueError:
            self._error(kind, 400, "invalid JSON body")
            return
        model = req.get("model", "")
        in_flight = owner._arrive(model)
        try:
            self._respond(owner, kind, req, in_flight)
        finally:
            owner._leave(model)

    def _respond(self, owner: "LLMTestServer", kind: str, req: dict, in_flight: int) -> None:
        if self._refused(owner, kind):
            return
        if owner.models is not None and req.get("model") not in owner.models:
            owner._count("refused")
            model = req.get("model")
            if kind == "anthropic":
                return self._send(404, {"type": "error", "error": {"type": "not_found_error",
                                                                   "message": f"model: {model}"}})
            return self._error(kind, 404, f"The model `{model}` does not exist or you do not have access to it.",
                               code="model_not_found")
        if owner.refuse is not None and (refusal := owner.refuse(req, kind)) is not None:
            owner._count("refused")
            return self._error(kind, *refusal)

        fault = owner._draw_fault()
        if owner.max_in_flight is not None and in_flight > owner.max_in_flight:
            fault = "429"  # over the server's capacity, as a provider answers beyond an account's limit
            owner._count("over_capacity")
        latency = owner._latency(in_flight)
        if latency and owner._stop.wait(latency):
            return
        if fault == "429":
            owner._count("throttled")
            self._error(kind, 429, "rate limited (injected)",
                        {"Retry-After": str(owner.retry_after_s)})
            return
        if fault == "500":
            self._error(kind, 500, "internal error (injected)")
            return
        if fault == "hang":
            if owner._stop.wait(owner.hang_s):
                self.close_connection = True
                return
        if owner._held():
            self.close_connection = True  # never answered: the client that asked is gone
            return
        try:
            body = owner._answer(req, kind, malformed=(fault == "malformed"))
        except Exception as exc:  # responder bugs become 500s
            self._error(kind, 500, f"responder failed: {exc!r}")
            return
        if self._send(200, body):
            owner._record_served(req, body)

    def _error(self, kind: str, status: int, message: str,
               headers: dict[str, str] | None = None, code: str | None = None) -> None:
        etype = {429: "rate_limit_error", 400: "invalid_request_error"}.get(
            status, "api_error" if kind == "anthropic" else "server_error")
        if kind == "anthropic":
            body = {"type": "error", "error": {"type": etype, "message": message}}
        else:
            body = {"error": {"message": message, "type": etype, "param": None, "code": code}}
        self._send(status, body, headers)

    def _send(self, status: int, body: dict, headers: dict[str, str] | None = None) -> bool:
        data = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
            return True
        except OSError:  # client went away (e.g. timed out on a hang)
            self.close_connection = True
            return False


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 256
    owner: "LLMTestServer"

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client killed mid-request (the chaos tests do it on purpose) is no error of the server's."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class LLMTestServer:
    """Fake OpenAI + Anthropic endpoint on 127.0.0.1 with seeded fault injection.

    Use as a context manager; ``url`` / ``openai_base_url`` are set on entry.
    """

    def __init__(self, *, respond: Responder | None = None, p429: float = 0.0,
                 p500: float = 0.0, p_malformed: float = 0.0, p_hang: float = 0.0,
                 latency_s: float = 0.0, hang_s: float = 30.0, retry_after_s: float = 0.05,
                 latency_jitter_s: float = 0.0, max_in_flight: int | None = None,
                 slow_per_in_flight_s: float = 0.0, batch_step_s: float = 0.2, batch_p_fail: float = 0.0,
                 batch_expire_every: int = 0, api_key: str | None = None, seed: int = 0,
                 batch_create_delay_s: float = 0.0, strict_paths: bool = False, models: list[str] | None = None,
                 refuse: Callable[[dict, str], tuple[int, str] | None] | None = None,
                 refuse_batches: tuple[int, str] | None = None) -> None:
        """`latency_s` + U(0, `latency_jitter_s`) per request, plus `slow_per_in_flight_s` for each request in
        flight (a server that slows down under load); beyond `max_in_flight` requests at once, a 429.

        Refusals, as a provider answers a wrong config (each counted in `refused`; `posts` counts every POST):
        `strict_paths` serves only the /v1/... paths (anything else is a 404, as OpenAI answers a base_url without
        /v1); `models` are the only models there are (another is a 404 `model_not_found`; the models list lists
        them); `refuse(body, kind)` may name a (status, message) to answer a completion request with; every call to
        the Batch APIs is answered `refuse_batches` (status, message) when it is set."""
        self.strict_paths, self.models, self.refuse, self.refuse_batches = strict_paths, models, refuse, refuse_batches
        self.posts = self.refused = 0
        self.respond = respond
        self.p429, self.p500, self.p_malformed, self.p_hang = p429, p500, p_malformed, p_hang
        self.latency_s, self.hang_s, self.retry_after_s = latency_s, hang_s, retry_after_s
        self.latency_jitter_s, self.max_in_flight = latency_jitter_s, max_in_flight
        self.slow_per_in_flight_s = slow_per_in_flight_s
        self.in_flight = self.peak_in_flight = self.throttled = self.over_capacity = 0
        self.arrivals: list[float] = []  # when each request arrived
        self.in_flight_by_model: dict[str, int] = {}
        self.peak_by_model: dict[str, int] = {}
        self.arrivals_by_model: dict[str, list[float]] = {}
        self.tokens_in = self.tokens_out = 0  # usage reported in the answers delivered
        # Batch APIs: each batch moves one status every `batch_step_s`; an item fails with `batch_p_fail`; every
        # `batch_expire_every`-th batch expires with only half of its items answered
        self.batch_step_s, self.batch_p_fail, self.batch_expire_every = batch_step_s, batch_p_fail, batch_expire_every
        self.batch_create_delay_s = batch_create_delay_s  # a batch is made this long before its creator hears of it
        self._hold = threading.Event()  # set: requests wait unanswered (`hold_answers`)
        self.files: dict[str, bytes] = {}
        self.api_key = api_key  # when set, any other key is refused with a 401
        self.batches: dict[str, dict] = {}
        self.seed = seed
        self._rng = random.Random(seed)
        self._seen: dict[int, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.requests = 0
        self.served_log: list[tuple[float, int]] = []  # (time, digest of the request) of every answer delivered
        self.served = 0
        self.url = ""
        self.openai_base_url = ""

    # -- lifecycle
    def __enter__(self) -> "LLMTestServer":
        self._stop.clear()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{port}"
        self.openai_base_url = self.url + "/v1"
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()  # wakes hanging / sleeping handlers
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    # -- counters
    def reset_counts(self) -> None:
        """Zero the counters, and forget the served log and the arrivals."""
        with self._lock:
            self.requests = self.served = self.throttled = self.peak_in_flight = self.over_capacity = 0
            self.posts = self.refused = 0
            self.tokens_in = self.tokens_out = 0
            self.served_log, self.arrivals = [], []
            self.peak_by_model, self.arrivals_by_model = {}, {}

    def hold_answers(self) -> None:
        """From now on no request is answered: each waits, and is dropped unanswered by `drop_held`. A test that
        kills its client while answers are held knows every answer the client was ever sent."""
        self._hold.set()

    def drop_held(self) -> None:
        """The requests waiting since `hold_answers` get no answer (their connection is closed); later ones do."""
        self._hold.clear()

    def _held(self) -> bool:
        """Whether this request came while answers were held (it then waited until they no longer were)."""
        if not self._hold.is_set():
            return False
        while self._hold.is_set() and not self._stop.wait(0.02):
            pass
        return True

    def _arrive(self, model: str) -> int:
        with self._lock:
            self.requests += 1
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            self.in_flight_by_model[model] = self.in_flight_by_model.get(model, 0) + 1
            self.peak_by_model[model] = max(self.peak_by_model.get(model, 0), self.in_flight_by_model[model])
            self.arrivals.append(time.time())
            self.arrivals_by_model.setdefault(model, []).append(time.time())
            return self.in_flight

    def _leave(self, model: str) -> None:
        with self._lock:
            self.in_flight -= 1
            self.in_flight_by_model[model] -= 1

    def _latency(self, in_flight: int) -> float:
        with self._lock:
            jitter = self._rng.uniform(0, self.latency_jitter_s) if self.latency_jitter_s else 0.0
        return self.latency_s + jitter + self.slow_per_in_flight_s * in_flight

    def max_per_window(self, window_s: float = 60.0, model: str | None = None) -> int:
        """The most requests (to `model`, or to any) that arrived within any `window_s` seconds."""
        times = sorted(self.arrivals if model is None else self.arrivals_by_model.get(model, []))
        most, start = 0, 0
        for end, at in enumerate(times):
            while at - times[start] >= window_s:
                start += 1
            most = max(most, end - start + 1)
        return most

    def _record_served(self, req: dict, body: dict) -> None:
        usage = body.get("usage") or {}
        with self._lock:
            self.served += 1
            self.served_log.append((time.time(), _digest(req)))
            self.tokens_in += usage.get("prompt_tokens", usage.get("input_tokens", 0))
            self.tokens_out += usage.get("completion_tokens", usage.get("output_tokens", 0))

    def _count(self, attr: str) -> None:
        with self._lock:
            setattr(self, attr, getattr(self, attr) + 1)

    def _draw_fault(self) -> str | None:
        with self._lock:
            x = self._rng.random()
        for name, p in (("429", self.p429), ("500", self.p500),
                        ("hang", self.p_hang), ("malformed", self.p_malformed)):
            if x < p:
                return name
            x -= p
        return None

    # -- Batch APIs
    def _upload(self, content_type: str, raw: bytes) -> dict:
        from email.parser import BytesParser
        from email.policy import HTTP

        message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + raw)
        content = next(part.get_payload(decode=True) for part in message.iter_parts() if part.get_filename())
        file_id = f"file-{uuid.uuid4().hex[:24]}"
        with self._lock:
            self.files[file_id] = content
        return {"id": file_id, "object": "file", "bytes": len(content), "created_at": int(time.time()),
                "filename": "requests.jsonl", "purpose": "batch", "status": "processed"}

    def _create_batch(self, kind: str, body: dict) -> dict:
        if kind == "openai":
            lines = [json.loads(line) for line in self.files[body["input_file_id"]].splitlines() if line.strip()]
            requests = [(line["custom_id"], line["body"]) for line in lines]
        else:
            requests = [(r["custom_id"], r["params"]) for r in body["requests"]]
        with self._lock:
            number = len(self.batches) + 1
            batch = {"id": f"{'batch' if kind == 'openai' else 'msgbatch'}_{uuid.uuid4().hex[:20]}", "kind": kind,
                     "created": time.time(), "requests": requests, "number": number, "results": None,
                     "metadata": body.get("metadata") if kind == "openai" else None,
                     "expires": bool(self.batch_expire_every) and number % self.batch_expire_every == 0}
            self.batches[batch["id"]] = batch
        return batch

    def _stage(self, batch: dict) -> int:
        """0 validating, 1 in progress, 2 finalizing, 3 ended: one step per `batch_step_s`."""
        return min(int((time.time() - batch["created"]) / self.batch_step_s), 3) if self.batch_step_s else 3

    def _results(self, batch: dict) -> list[tuple[str, dict | None, str | None]]:
        """(custom id, answer body or None, error or None) per request answered, in a shuffled order."""
        with self._lock:
            if batch["results"] is not None:
                return batch["results"]
        rnd = random.Random(_digest(self.seed, batch["id"]))
        out = []
        for i, (custom_id, body) in enumerate(batch["requests"]):
            if batch["expires"] and i % 2:
                out.append((custom_id, None, "expired"))
            elif rnd.random() < self.batch_p_fail:
                out.append((custom_id, None, "failed"))
            else:
                answer = self._answer(body, batch["kind"], malformed=False)
                self._record_served(body, answer)
                out.append((custom_id, answer, None))
        rnd.shuffle(out)  # results come back in any order
        with self._lock:
            batch["results"] = out
        return out

    def _openai_batch(self, batch: dict) -> dict:
        stage = self._stage(batch)
        status = ["validating", "in_progress", "finalizing", "expired" if batch["expires"] else "completed"][stage]
        out = {"id": batch["id"], "object": "batch", "endpoint": "/v1/chat/completions", "errors": None,
               "input_file_id": "file-input", "completion_window": "24h", "status": status,
               "output_file_id": None, "error_file_id": None, "created_at": int(batch["created"]),
               "request_counts": {"total": len(batch["requests"]), "completed": 0, "failed": 0},
               "metadata": batch.get("metadata")}
        if stage == 3:
            results = self._results(batch)
            done = [json.dumps({"id": f"batch_req_{i}", "custom_id": cid, "error": None,
                                "response": {"status_code": 200, "request_id": f"req_{i}", "body": answer}})
                    for i, (cid, answer, _) in enumerate(results) if answer is not None]
            bad = [json.dumps({"id": f"batch_req_{i}", "custom_id": cid,
                               "error": {"code": "batch_expired", "message": "This request could not be executed "
                                         "before the completion window expired."} if error == "expired" else None,
                               "response": None if error == "expired" else
                               {"status_code": 500, "request_id": f"req_{i}",
                                "body": {"error": {"message": "internal error (injected)", "type": "server_error"}}}})
                   for i, (cid, answer, error) in enumerate(results) if answer is None]
            for name, lines in (("output_file_id", done), ("error_file_id", bad)):
                if lines:
                    file_id = f"file-{batch['id']}-{name[:3]}"
                    self.files[file_id] = ("\n".join(lines) + "\n").encode()
                    out[name] = file_id
            out["request_counts"] = {"total": len(results), "completed": len(done), "failed": len(bad)}
        return out

    def _batch_list(self, kind: str, query: dict[str, list[str]]) -> dict:
        """The batches of one API, newest first, a page at a time: `limit`, and `after` (OpenAI) or `after_id`
        (Anthropic) the last id of the page before."""
        with self._lock:
            mine = sorted((b for b in self.batches.values() if b["kind"] == kind), key=lambda b: -b["number"])
        after = (query.get("after") or query.get("after_id") or [None])[0]
        if after is not None:
            ids = [b["id"] for b in mine]
            mine = mine[ids.index(after) + 1:] if after in ids else []
        limit = int((query.get("limit") or ["20"])[0])
        page = [self._openai_batch(b) if kind == "openai" else self._anthropic_batch(b) for b in mine[:limit]]
        out = {"data": page, "has_more": len(mine) > limit}
        if kind == "openai":
            return {"object": "list", **out}
        return {**out, "first_id": page[0]["id"] if page else None, "last_id": page[-1]["id"] if page else None}

    def _anthropic_batch(self, batch: dict) -> dict:
        ended = self._stage(batch) == 3
        counts = {"processing": 0 if ended else len(batch["requests"]), "succeeded": 0, "errored": 0,
                  "canceled": 0, "expired": 0}
        if ended:
            for _, answer, error in self._results(batch):
                counts["succeeded" if answer else "expired" if error == "expired" else "errored"] += 1
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(batch["created"]))
        return {"id": batch["id"], "type": "message_batch", "processing_status": "ended" if ended else "in_progress",
                "request_counts": counts, "ended_at": created if ended else None, "created_at": created,
                "expires_at": created, "archived_at": None, "cancel_initiated_at": None,
                "results_url": f"{self.url}/v1/messages/batches/{batch['id']}/results" if ended else None}

    def _anthropic_results(self, batch: dict) -> bytes:
        lines = []
        for cid, answer, error in self._results(batch):
            if answer is not None:
                result = {"type": "succeeded", "message": answer}
            elif error == "expired":
                result = {"type": "expired"}
            else:
                result = {"type": "errored", "error": {"type": "error",
                                                       "error": {"type": "api_error", "message": "internal error (injected)"}}}
            lines.append(json.dumps({"custom_id": cid, "result": result}))
        return ("\n".join(lines) + "\n").encode()

    # -- answers
    def _occurrence(self, req: dict) -> int:
        """How many times this very request was answered before, when it carries no sampling seed (Anthropic's API
        has none): a real model samples anew each time, so the n-th asking gets the n-th answer. With a seed
        (OpenAI's), the same request gets the same answer, as the seed promises."""
        if "seed" in req:
            return 0
        key = _digest(req)
        with self._lock:
            seen = self._seen.get(key, 0)
            self._seen[key] = seen + 1
        return seen

    def _answer(self, req: dict, kind: str, malformed: bool) -> dict:
        rnd = random.Random(_digest(self.seed, kind, req, self._occurrence(req)))
        structured = _structured_schema(req, kind)
        custom = self.respond(req, kind) if self.respond else None
        if structured is not None:
            schema, name = structured
            if malformed:
                payload: Any = '{"oops": '
            elif custom is not None:
                payload = custom
            else:
                payload = generate_from_schema(schema, rnd)
        else:
            name = ""
            payload = custom if custom is not None else default_text(req, rnd)
        if isinstance(payload, dict) and structured is None:
            payload = json.dumps(payload)

        text = payload if isinstance(payload, str) else json.dumps(payload)
        truncated = False
        limit = req.get("max_completion_tokens") or req.get("max_tokens")
        if structured is None and isinstance(limit, int) and len(text.split()) > limit:
            text, truncated = " ".join(text.split()[:limit]), True
        in_tok, out_tok = _prompt_words(req), len(text.split())
        model = req.get("model", "fake-model")

        if kind == "openai":
            return {
                "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion",
                "created": int(time.time()), "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": "length" if truncated else "stop"}],
                "usage": {"prompt_tokens": in_tok, "completion_tokens": out_tok,
                          "total_tokens": in_tok + out_tok},
            }
        if structured is not None and isinstance(payload, dict):
            content = [{"type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:24]}",
                        "name": name, "input": payload}]
            stop = "tool_use"
        else:
            content = [{"type": "text", "text": text}]
            stop = "max_tokens" if truncated else "end_turn"
        return {
            "id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant",
            "model": model, "content": content, "stop_reason": stop, "stop_sequence": None,
            "usage": {"input_tokens": in_tok, "output_tokens": out_tok},
        }


# --------------------------------------------------------------------------- judge responders

_JUDGE_ANSWER = r"### Answer \d+\n(.*?)(?=\n\n### Answer \d+\n|\n\nRate all \d+ answers)"


def judge_prompt_answers(req: dict) -> list[str] | None:
    """The answers a judge prompt (`alignflow/prompts/judge.txt`) shows, in the order shown; None for any other
    request. A re-ask adds turns after the prompt, so the first user message is the one read."""
    import re

    first = next((m for m in req.get("messages") or [] if m.get("role") == "user"), None)
    text = _text_of(first.get("content")) if first else ""
    if "Rate all " not in text or "### Answer 1\n" not in text:
        return None
    return re.findall(_JUDGE_ANSWER, text, flags=re.S)


def preferring_judge(chosen: set[str]) -> Responder:
    """A judge that rates 5 each shown answer in `chosen` (the answers people preferred) and 1 any other."""
    wanted = {text.strip() for text in chosen}

    def respond(req: dict, kind: str) -> dict | None:
        answers = judge_prompt_answers(req)
        if answers is None:
            return None
        return {"ratings": [{"rationale": "the preferred answer" if a.strip() in wanted else "the other answer",
                             "rating": 5 if a.strip() in wanted else 1} for a in answers]}

    return respond


def random_judge(seed: int = 0) -> Responder:
    """A judge that rates every shown answer 1-5 at random: seeded by `seed` and the request, so the same request
    gets the same ratings whatever order requests arrive in."""

    def respond(req: dict, kind: str) -> dict | None:
        answers = judge_prompt_answers(req)
        if answers is None:
            return None
        rnd = random.Random(_digest(seed, req))
        return {"ratings": [{"rationale": "a coin", "rating": rnd.randint(1, 5)} for _ in answers]}

    return respond
