"""The terminal's progress bars: a progress sink for the domain's counts (see `alignflow.engine.progress`)."""
from __future__ import annotations

import time


class RichProgress:
    """Per stage: rows done of total, requests per second, failures so far; under the bars, each endpoint's
    requests in flight, its current cap (lowered on 429s) and its share of 429s."""

    def __init__(self, console):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
        from rich.text import Text

        from alignflow.llm.endpoint import traffic_lines

        class WithEndpoints(Progress):
            def get_renderables(self):
                yield self.make_tasks_table(self.tasks)
                if lines := traffic_lines():
                    yield Text("\n".join(lines), style="dim")

        self._progress = WithEndpoints(TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(),
                                       TextColumn("{task.fields[rate]:>7} req/s  failed {task.fields[failed]}"),
                                       TimeElapsedColumn(), console=console)
        self._tasks: dict[str, tuple[int, float]] = {}
        self._done: dict[str, int] = {}
        self._failed: dict[str, int] = {}

    def __enter__(self):
        self._progress.start()
        return self

    def __exit__(self, *exc):
        if not self._tasks:  # nothing was asked for (a run refused at its start): no frame of idle endpoints is left
            self._progress.live.transient = True
        self._progress.stop()

    def start(self, stage: str, total: int) -> None:
        """Concurrent batches of one stage share its bar: each adds its rows to the total."""
        if stage in self._tasks:
            task, _ = self._tasks[stage]
            self._progress.update(task, total=self._progress.tasks[task].total + total)
            return
        task = self._progress.add_task(stage, total=total, rate="-", failed=0)
        self._tasks[stage] = (task, time.perf_counter())
        self._done[stage] = self._failed[stage] = 0

    def advance(self, stage: str, done: int = 1, failed: int = 0) -> None:
        task, started = self._tasks[stage]
        self._done[stage] += done
        self._failed[stage] += failed
        rate = self._done[stage] / max(time.perf_counter() - started, 1e-6)
        self._progress.update(task, advance=done, rate=f"{rate:.1f}", failed=self._failed[stage])

    def finish(self, stage: str) -> None:
        pass
