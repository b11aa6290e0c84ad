"""distilabel 1.5.3's side of `throughput.py`, run in a side venv that has it: the same prompts through its
OpenAILLM in a TextGeneration step, C inputs a batch (its unit of concurrency), the SDK's retries on.

    PYTHON benchmarks/_distilabel_generate.py BASE_URL REQUESTS C      # prints {"ok": N, "failed": M}
"""
import json
import logging
import sys

from distilabel.llms import OpenAILLM
from distilabel.pipeline import Pipeline
from distilabel.steps import LoadDataFromDicts
from distilabel.steps.tasks import TextGeneration


def main() -> None:
    url, n, cap = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    logging.disable(logging.WARNING)
    rows = [{"instruction": f"Benchmark instruction {i}: explain something briefly."} for i in range(n)]
    with Pipeline(name="throughput") as pipeline:
        load = LoadDataFromDicts(data=rows, batch_size=cap)
        generate = TextGeneration(llm=OpenAILLM(model="bench", base_url=url, api_key="unused", max_retries=8,
                                                generation_kwargs={"max_new_tokens": 64}),
                                  input_batch_size=cap)
        load >> generate
    distiset = pipeline.run(use_cache=False)
    out = distiset["default"]["train"]
    ok = sum(g is not None for g in out["generation"])
    print(json.dumps({"ok": ok, "failed": len(out) - ok}))


if __name__ == "__main__":
    main()
