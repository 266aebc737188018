"""The live progress bar of `submit` and `run`: done/total, items/s, tokens, cost, ETA.

One bar for both modes (a `commands.Progress`): concurrent mode counts the outcomes the ledger
writer has committed, so it only shows what is durable; batch mode shows the items settled
plus what the live batches report done, never 100% while a batch is still finalizing.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from tqdm import tqdm

from batchrunner.ledger.models import FAILED, SUCCEEDED
from batchrunner.outcome import Outcome

if TYPE_CHECKING:
    from batchrunner.runner.batch import BatchProgress


class ProgressBar:
    def __init__(self, total: int, done: int, enabled: bool | None = None) -> None:
        self._bar = tqdm(
            total=total,
            initial=done,
            unit="item",
            file=sys.stderr,
            disable=not enabled if enabled is not None else None,
            dynamic_ncols=True,
            smoothing=0.1,
        )
        self.input_tokens = 0
        self.output_tokens = 0
        self.cost_usd = 0.0  # of this run's priced answers
        self.unpriced = 0  # answers whose model has no price: their cost is unknown

    def on_outcomes(self, outcomes: list[Outcome]) -> None:
        finished = 0
        for outcome in outcomes:
            if outcome.state in (SUCCEEDED, FAILED):
                finished += 1
            result = outcome.result
            self.input_tokens += result.input_tokens or 0
            self.output_tokens += result.output_tokens or 0
            if result.cost_usd is not None:
                self.cost_usd += result.cost_usd
            elif result.output_tokens is not None:
                self.unpriced += 1
        cost = f"${self.cost_usd:.4f}"
        if self.unpriced:
            cost += f" + {self.unpriced:,} unpriced"
        self._bar.set_postfix_str(
            f"tokens {self.input_tokens:,} in / {self.output_tokens:,} out, cost {cost}",
            refresh=False,
        )
        self._bar.update(finished)

    def on_batches(self, progress: BatchProgress) -> None:
        shown = progress.settled + progress.in_flight_done
        if progress.states:  # a live batch: its items are not in the ledger yet
            shown = min(shown, progress.total - 1)
        self._bar.n = max(0, shown)
        states = ", ".join(f"{name} {n}" for name, n in sorted(progress.states.items()))
        self._bar.set_postfix_str(f"batches: {states or 'none live'}", refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        self._bar.close()
