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
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

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

    def do_GET(self) -> None:  # noqa: N802
        self._send(200, {"status": "ok"})

    def do_POST(self) -> None:  # noqa: N802
        owner = self.server.owner
        path = self.path.split("?", 1)[0].rstrip("/")
        if path in ("/v1/chat/completions", "/chat/completions"):
            kind = "openai"
        elif path in ("/v1/messages", "/messages"):
            kind = "anthropic"
        else:
            self._send(404, {"error": {"message": f"unknown path {self.path}"}})
            return
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b"{}"
        owner._count("requests")
        try:
            req = json.loads(raw or b"{}")
        except ValueError:
            self._error(kind, 400, "invalid JSON body")
            return

        fault = owner._draw_fault()
        if owner.latency_s and owner._stop.wait(owner.latency_s):
            return
        if fault == "429":
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
        try:
            body = owner._answer(req, kind, malformed=(fault == "malformed"))
        except Exception as exc:  # responder bugs become 500s
            self._error(kind, 500, f"responder failed: {exc!r}")
            return
        if self._send(200, body):
            owner._record_served(req)

    def _error(self, kind: str, status: int, message: str,
               headers: dict[str, str] | None = None) -> None:
        etype = {429: "rate_limit_error", 400: "invalid_request_error"}.get(
            status, "api_error" if kind == "anthropic" else "server_error")
        if kind == "anthropic":
            body = {"type": "error", "error": {"type": etype, "message": message}}
        else:
            body = {"error": {"message": message, "type": etype, "param": None, "code": None}}
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


class LLMTestServer:
    """Fake OpenAI + Anthropic endpoint on 127.0.0.1 with seeded fault injection.

    Use as a context manager; ``url`` / ``openai_base_url`` are set on entry.
    """

    def __init__(self, *, respond: Responder | None = None, p429: float = 0.0,
                 p500: float = 0.0, p_malformed: float = 0.0, p_hang: float = 0.0,
                 latency_s: float = 0.0, hang_s: float = 30.0, retry_after_s: float = 0.05,
                 seed: int = 0) -> None:
        self.respond = respond
        self.p429, self.p500, self.p_malformed, self.p_hang = p429, p500, p_malformed, p_hang
        self.latency_s, self.hang_s, self.retry_after_s = latency_s, hang_s, retry_after_s
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
        """Zero ``requests`` and ``served``, and forget the served log."""
        with self._lock:
            self.requests = self.served = 0
            self.served_log = []

    def _record_served(self, req: dict) -> None:
        with self._lock:
            self.served += 1
            self.served_log.append((time.time(), _digest(req)))

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
