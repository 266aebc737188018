"""A pre-flight estimate of a job file: requests, tokens and cost per model, with no network.

The file is streamed through `jobfile.read_job_items` and only per-model totals are kept, so a
file of millions of lines needs the memory of ten. Prompt tokens are counted with the model's
real encoding, and output tokens by the one demand rule (demand.py): each request counts its own
cap (`max_completion_tokens` / `max_tokens` / `max_output_tokens`: an upper bound), else
`assume_output`, else TYPICAL_OUTPUT for chat and responses; embeddings have none. Each request
is priced on its own (tiered prices depend on its size), no input assumed cached, in both
modes: concurrent (standard rates) and the Batch API.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from batchrunner.demand import TYPICAL_OUTPUT, token_demand
from batchrunner.dialects.openai import batchless_reason
from batchrunner.errors import UsageError
from batchrunner.items import JobItem
from batchrunner.jobfile import JobDefaults, read_job_items
from batchrunner.pricing import (
    Cost,
    PriceTable,
    Rates,
    rates_for,
    unpriced_note,
    unpriced_reason,
)
from batchrunner.usage import Usage, format_usd

EXACT_FIRST = 1_000  # submit counts this many requests each, then samples
SAMPLES = 2_000  # about this many more, whatever the size of the file
SEED = 8


@dataclass
class ModelEstimate:
    model: str
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0  # assumed: caps where set, else the assumed output
    uncapped_requests: int = 0  # requests counted at the assumed output
    cost_concurrent: float | None = 0.0  # None: no price known for the model
    cost_batch: float | None = 0.0
    batch_discount_assumed: bool = False  # batch cost = standard rates less 50%
    price_source: str | None = None
    # The model's rates per mode (batch or not), looked up once: half of counting a request.
    # So every `add` to one row must pass the same `when` and `overrides` (a builder does).
    _rates: dict[bool, Rates | None] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def add(
        self, usage: Usage, capped: bool, when: datetime | None, overrides: PriceTable | None
    ) -> None:
        """Count one request; a model without a price stays at cost None."""
        self.requests += 1
        self.input_tokens += usage.input_tokens or 0
        self.output_tokens += usage.output_tokens or 0
        self.uncapped_requests += not capped
        if self.cost_concurrent is not None:
            cost = self._price(usage, False, when, overrides)
            self.cost_concurrent = None if cost is None else self.cost_concurrent + cost.usd
            self.price_source = cost.source if cost is not None else None
        if self.cost_batch is not None:
            cost = self._price(usage, True, when, overrides)
            self.cost_batch = None if cost is None else self.cost_batch + cost.usd
            self.batch_discount_assumed |= cost is not None and cost.batch_discount_assumed

    def _price(
        self, usage: Usage, batch: bool, when: datetime | None, overrides: PriceTable | None
    ) -> Cost | None:
        """One request on its own (tiered prices depend on its size)."""
        if batch not in self._rates:
            self._rates[batch] = rates_for(self.model, batch=batch, when=when, overrides=overrides)
        rates = self._rates[batch]
        return rates.cost(usage) if rates is not None else None

    def merge_scaled(self, sample: ModelEstimate, unseen: int) -> None:
        """Add a sample of requests, counted, and `unseen` more requests like them."""
        factor = (sample.requests + unseen) / sample.requests
        self.requests += sample.requests + unseen
        self.input_tokens += round(sample.input_tokens * factor)
        self.output_tokens += round(sample.output_tokens * factor)
        self.uncapped_requests += round(sample.uncapped_requests * factor)
        if self.cost_concurrent is not None:
            costs = sample.cost_concurrent
            self.cost_concurrent = None if costs is None else self.cost_concurrent + costs * factor
        if self.cost_batch is not None:
            costs = sample.cost_batch
            self.cost_batch = None if costs is None else self.cost_batch + costs * factor
        self.batch_discount_assumed |= sample.batch_discount_assumed
        self.price_source = self.price_source or sample.price_source


@dataclass
class Estimate:
    path: str
    assumed_output: int
    models: dict[str, ModelEstimate] = field(default_factory=dict)
    sampled: bool = False  # extrapolated from a sample of the requests (large files, submit)
    prices: PriceTable | None = None  # the job's own prices, as the rates were looked up

    @property
    def requests(self) -> int:
        return sum(m.requests for m in self.models.values())

    @property
    def input_tokens(self) -> int:
        return sum(m.input_tokens for m in self.models.values())

    @property
    def output_tokens(self) -> int:
        return sum(m.output_tokens for m in self.models.values())

    @property
    def unpriced_models(self) -> list[str]:
        return sorted(m.model for m in self.models.values() if m.cost_concurrent is None)

    @property
    def batch_assumed_models(self) -> list[str]:
        return sorted(m.model for m in self.models.values() if m.batch_discount_assumed)

    @property
    def batchless_models(self) -> list[str]:
        """Priced models the Batch API does not take: batch mode refuses them."""
        return sorted(
            m.model
            for m in self.models.values()
            if m.cost_concurrent is not None and batchless_reason(m.model)
        )

    @property
    def cost_concurrent(self) -> float | None:
        """The total, or None when any model has no known price."""
        costs = [m.cost_concurrent for m in self.models.values()]
        return None if None in costs else sum(c or 0.0 for c in costs)

    @property
    def cost_batch(self) -> float | None:
        costs = [m.cost_batch for m in self.models.values()]
        return None if None in costs else sum(c or 0.0 for c in costs)


class EstimateBuilder:
    """Counts items one at a time, so a pass that reads the file anyway (submit) can estimate."""

    def __init__(
        self,
        *,
        path: str = "",
        assume_output: int | None = None,
        overrides: PriceTable | None = None,
        when: datetime | None = None,
    ) -> None:
        if assume_output is not None and assume_output < 0:
            raise UsageError(f"the assumed output must be 0 or more tokens, got {assume_output}")
        assumed = TYPICAL_OUTPUT if assume_output is None else assume_output
        self.estimate = Estimate(path=path, assumed_output=assumed, prices=overrides)
        self._overrides = overrides
        self._when = when

    def add(self, item: JobItem, into: dict[str, ModelEstimate] | None = None) -> None:
        rows = self.estimate.models if into is None else into
        row = rows.get(item.model)
        if row is None:
            row = rows[item.model] = ModelEstimate(item.model)
        demand = token_demand(item.url, orjson.loads(item.body))
        output = demand.output(self.estimate.assumed_output)
        usage = Usage(input_tokens=demand.prompt, output_tokens=output)
        row.add(usage, demand.capped, self._when, self._overrides)

    def passing(
        self,
        items: Iterable[JobItem],
        exact_first: int = EXACT_FIRST,
        samples: int = SAMPLES,
        total: int | None = None,
    ) -> Iterator[JobItem]:
        """Yield `items` unchanged, counting them on the way: the first `exact_first` each,
        then a random sample (seeded: the same file gives the same estimate) of about `samples`
        of the `total` requests (1 in 10 when the total is not given), and always the first
        request of each model after the first `exact_first`; what the sample saw is scaled up
        per model to all the requests it stands for.

        Counting tokens and pricing is most of the cost of recording a large file; a random
        sample of a few thousand requests estimates the total within a few percent."""
        rest = None if total is None else total - exact_first
        rate = 0.1 if rest is None else min(1.0, samples / rest) if rest > 0 else 1.0
        draw = random.Random(SEED).random
        sample: dict[str, ModelEstimate] = {}
        skipped: dict[str, int] = {}
        for index, item in enumerate(items):
            if index < exact_first:
                self.add(item)
            elif item.model not in sample or draw() < rate:
                self.add(item, sample)
            else:
                skipped[item.model] = skipped.get(item.model, 0) + 1
            yield item
        models = self.estimate.models
        for model, row in sample.items():
            if model not in models:
                models[model] = ModelEstimate(model)
            models[model].merge_scaled(row, skipped.get(model, 0))
        self.estimate.sampled = bool(skipped)


def estimate_items(
    items: Iterable[JobItem],
    *,
    path: str = "",
    assume_output: int | None = None,
    overrides: PriceTable | None = None,
    when: datetime | None = None,
) -> Estimate:
    """Estimate any stream of job items (`estimate_job_file` reads them from a file)."""
    builder = EstimateBuilder(
        path=path, assume_output=assume_output, overrides=overrides, when=when
    )
    for item in items:
        builder.add(item)
    return builder.estimate


def estimate_job_file(
    path: str,
    defaults: JobDefaults | None = None,
    *,
    assume_output: int | None = None,
    overrides: PriceTable | None = None,
    when: datetime | None = None,
) -> Estimate:
    """Estimate a job file, streaming. Raises `JobFileError` at the first invalid line; run
    `jobfile.check_job_file` first to list every problem."""
    items = read_job_items(path, defaults or JobDefaults())
    return estimate_items(
        items, path=path, assume_output=assume_output, overrides=overrides, when=when
    )


def _json_usd(value: float | None) -> float | None:
    return None if value is None else round(value, 10)


def _row(name: str, m: ModelEstimate | Estimate, batch_note: str = "") -> list[str]:
    return [
        name,
        f"{m.requests:,}",
        f"{m.input_tokens:,}",
        f"{m.output_tokens:,}",
        format_usd(m.cost_concurrent),
        format_usd(m.cost_batch) + batch_note,
    ]


def format_estimate(estimate: Estimate) -> str:
    """A small table: one row per model, then the total and the assumptions made."""
    table = [["model", "requests", "input tokens", "output tokens*", "concurrent", "batch"]]
    for m in sorted(estimate.models.values(), key=lambda m: m.model):
        table.append(_row(m.model, m, "**" if m.batch_discount_assumed else ""))
    table.append(_row("total", estimate))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = [
        "  ".join(
            [row[0].ljust(widths[0])]
            + [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        )
        for row in table
    ]
    uncapped = sum(m.uncapped_requests for m in estimate.models.values())
    lines.append(
        f"* output: each request's max_tokens-style cap where it sets one, else "
        f"{estimate.assumed_output:,} tokens ({uncapped:,} requests); none where the answer is "
        "not text (embeddings, moderations, images, videos)"
    )
    if estimate.batch_assumed_models:
        lines.append(
            "** no batch price known: OpenAI's 50% Batch API discount assumed for "
            + ", ".join(estimate.batch_assumed_models)
        )
    if estimate.batchless_models:
        lines.append(
            f"no Batch API for {', '.join(estimate.batchless_models)}: no batch price, and "
            "batch mode refuses them"
        )
    if estimate.unpriced_models:
        lines.append(
            f"{unpriced_note(estimate.unpriced_models, estimate.prices)}: give their prices "
            "with a price file"
        )
    return "\n".join(lines)


def estimate_line(estimate: Estimate, mode: str) -> str:
    """The estimate in one line, for `submit`: the job's mode first."""
    costs = {"concurrent": estimate.cost_concurrent, "batch": estimate.cost_batch}
    other = "batch" if mode == "concurrent" else "concurrent"
    about = "about " if estimate.sampled else ""
    line = (
        f"estimate: {about}{estimate.input_tokens:,} input + up to {estimate.output_tokens:,} "
        f"output tokens, {format_usd(costs[mode])} ({other} mode: {format_usd(costs[other])})"
    )
    if estimate.sampled:
        line += " [from a sample; `batchrunner estimate` counts every request]"
    if estimate.unpriced_models:
        line += f"; warning: {unpriced_note(estimate.unpriced_models, estimate.prices)}"
    return line


def estimate_as_json(estimate: Estimate) -> dict[str, Any]:
    """The estimate as plain JSON types; costs in USD, null when unknown."""
    return {
        "file": estimate.path,
        "requests": estimate.requests,
        "input_tokens": estimate.input_tokens,
        "output_tokens": estimate.output_tokens,
        "cost_concurrent_usd": _json_usd(estimate.cost_concurrent),
        "cost_batch_usd": _json_usd(estimate.cost_batch),
        "assumed_output_tokens_per_request": estimate.assumed_output,
        "unpriced_models": estimate.unpriced_models,
        "unpriced_reasons": {
            m: unpriced_reason(m, estimate.prices) for m in estimate.unpriced_models
        },
        "batch_discount_assumed_models": estimate.batch_assumed_models,
        "batchless_models": estimate.batchless_models,
        "models": [
            {
                "model": m.model,
                "requests": m.requests,
                "input_tokens": m.input_tokens,
                "output_tokens": m.output_tokens,
                "uncapped_requests": m.uncapped_requests,
                "cost_concurrent_usd": _json_usd(m.cost_concurrent),
                "cost_batch_usd": _json_usd(m.cost_batch),
                "batch_discount_assumed": m.batch_discount_assumed,
                "price_source": m.price_source,
            }
            for m in sorted(estimate.models.values(), key=lambda m: m.model)
        ],
    }
