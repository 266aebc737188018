"""A pre-flight estimate of a job file: requests, tokens and cost per model, with no network.

The file is streamed through `jobfile.read_job_items` and only per-model totals are kept, so a
file of millions of lines needs the memory of ten. Prompt tokens are counted with the model's
real encoding, and output tokens by the one demand rule (demand.py): each request counts its own
cap (`max_completion_tokens` / `max_tokens` / `max_output_tokens`: an upper bound), else
`assume_output`, else TYPICAL_OUTPUT for chat and responses; embeddings have none. Each request
is priced on its own (tiered prices depend on its size), no input assumed cached, in both
modes: concurrent (standard rates) and the Batch API.

Beside that, what the provider's prompt cache could take off (prefixes.py): every request after
the first of its prefix group is assumed to get its shared head's cacheable tokens from the
cache, and is priced so as well ("with caching"); cache-aware runs come close to that.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import orjson

from batchrunner.demand import TYPICAL_OUTPUT, token_demand
from batchrunner.dialects.openai import batchless_reason
from batchrunner.errors import UsageError
from batchrunner.items import JobItem
from batchrunner.jobfile import JobDefaults, read_job_items
from batchrunner.prefixes import PrefixFinder, cacheable_tokens
from batchrunner.pricing import (
    Cost,
    PriceTable,
    Rates,
    rates_for,
    unpriced_note,
    unpriced_reason,
)
from batchrunner.usage import Usage, format_usd

MAX_GROUPS_SEEN = 1_000_000  # bounded: a job of only distinct heads forgets, and says less cached
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
    cached_tokens: int = 0  # input tokens the prompt cache could serve (after each group's first)
    cached_concurrent: float | None = 0.0  # the costs with those tokens at the cached rate
    cached_batch: float | None = 0.0
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
        self.cached_tokens += usage.cached_tokens or 0
        uncached = replace(usage, cached_tokens=None)
        if self.cost_concurrent is not None:
            cost = self._price(uncached, False, when, overrides)
            self.cost_concurrent = None if cost is None else self.cost_concurrent + cost.usd
            self.price_source = cost.source if cost is not None else None
            self.cached_concurrent = _plus(self.cached_concurrent, usage, cost, self._rates[False])
        if self.cost_batch is not None:
            cost = self._price(uncached, True, when, overrides)
            self.cost_batch = None if cost is None else self.cost_batch + cost.usd
            self.batch_discount_assumed |= cost is not None and cost.batch_discount_assumed
            self.cached_batch = _plus(self.cached_batch, usage, cost, self._rates[True])

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
        self.cached_tokens += round(sample.cached_tokens * factor)
        for name in ("cached_concurrent", "cached_batch"):
            mine, theirs = getattr(self, name), getattr(sample, name)
            setattr(self, name, None if None in (mine, theirs) else mine + theirs * factor)
        if self.cost_concurrent is not None:
            costs = sample.cost_concurrent
            self.cost_concurrent = None if costs is None else self.cost_concurrent + costs * factor
        if self.cost_batch is not None:
            costs = sample.cost_batch
            self.cost_batch = None if costs is None else self.cost_batch + costs * factor
        self.batch_discount_assumed |= sample.batch_discount_assumed
        self.price_source = self.price_source or sample.price_source


def _plus(
    total: float | None, usage: Usage, uncached: Cost | None, rates: Rates | None
) -> float | None:
    """A running cost with caching: the request's uncached cost when nothing of it is cached."""
    if total is None or uncached is None or rates is None:
        return None
    return total + (rates.cost(usage).usd if usage.cached_tokens else uncached.usd)


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
        return _total(m.cost_concurrent for m in self.models.values())

    @property
    def cost_batch(self) -> float | None:
        return _total(m.cost_batch for m in self.models.values())

    @property
    def cached_tokens(self) -> int:
        return sum(m.cached_tokens for m in self.models.values())

    @property
    def cached_share(self) -> float | None:
        """The share of input tokens the prompt cache could serve."""
        return self.cached_tokens / self.input_tokens if self.input_tokens else None

    def cached_cost(self, batch: bool) -> float | None:
        return _total(
            m.cached_batch if batch else m.cached_concurrent for m in self.models.values()
        )

    def priced_cached_cost(self, batch: bool) -> float | None:
        """`cached_cost` of the models that have a price (as `priced_cost_*`)."""
        return self._priced_part(
            m.cached_batch if batch else m.cached_concurrent for m in self.models.values()
        )

    @property
    def partly_priced(self) -> bool:
        """Some models have no price, others have: costs shown are the priced models' part."""
        return bool(self.unpriced_models) and self.priced_cost_concurrent is not None

    @property
    def priced_cost_concurrent(self) -> float | None:
        """The total of the models that have a price (all of it when every model has one);
        None when none has."""
        return self._priced_part(m.cost_concurrent for m in self.models.values())

    @property
    def priced_cost_batch(self) -> float | None:
        return self._priced_part(m.cost_batch for m in self.models.values())

    def _priced_part(self, costs: Iterable[float | None]) -> float | None:
        """The sum of the known costs; None when no model has one (0 for no models at all)."""
        known = [cost for cost in costs if cost is not None]
        return sum(known) if known or not self.models else None


def _total(costs: Iterable[float | None]) -> float | None:
    """The sum of the models' costs, or None as soon as one model has no known price."""
    total = 0.0
    for cost in costs:
        if cost is None:
            return None
        total += cost
    return total


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
        self._prefixes = PrefixFinder()
        self._groups_seen: set[str] = set()  # prefix groups whose first request was counted

    def add(self, item: JobItem, into: dict[str, ModelEstimate] | None = None) -> None:
        rows = self.estimate.models if into is None else into
        row = rows.get(item.model)
        if row is None:
            row = rows[item.model] = ModelEstimate(item.model)
        body = orjson.loads(item.body)
        demand = token_demand(item.url, body)
        output = demand.output(self.estimate.assumed_output)
        cached = self._cacheable(item.url, body)
        usage = Usage(input_tokens=demand.prompt, cached_tokens=cached, output_tokens=output)
        row.add(usage, demand.capped, self._when, self._overrides)

    def _cacheable(self, url: str, body: Any) -> int:
        """The tokens the prompt cache could serve this request: its group's head, unless it
        is the first of its group."""
        prefix = self._prefixes.find(url, body) if isinstance(body, dict) else None
        if prefix is None or not cacheable_tokens(prefix.tokens):
            return 0
        if prefix.group not in self._groups_seen:
            if len(self._groups_seen) >= MAX_GROUPS_SEEN:
                self._groups_seen.clear()
            self._groups_seen.add(prefix.group)
            return 0
        return cacheable_tokens(prefix.tokens)

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


def _share(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _row(
    name: str,
    m: ModelEstimate,
    batch_note: str = "",
    costs: tuple[float | None, float | None] | None = None,
) -> list[str]:
    concurrent, batch = costs if costs is not None else (m.cost_concurrent, m.cost_batch)
    return [
        name,
        f"{m.requests:,}",
        f"{m.input_tokens:,}",
        f"{m.output_tokens:,}",
        format_usd(concurrent),
        format_usd(batch) + batch_note,
    ]


def _total_row(estimate: Estimate) -> list[str]:
    """The total; with models that have no price, the priced models' part (named so)."""
    costs = (estimate.priced_cost_concurrent, estimate.priced_cost_batch)
    partly = bool(estimate.unpriced_models) and costs[0] is not None
    total = ModelEstimate(
        "total, priced models only" if partly else "total",
        requests=estimate.requests,
        input_tokens=estimate.input_tokens,
        output_tokens=estimate.output_tokens,
    )
    return _row(total.model, total, "", costs)


def format_estimate(estimate: Estimate) -> str:
    """A small table: one row per model, then the total and the assumptions made."""
    table = [["model", "requests", "input tokens", "output tokens*", "concurrent", "batch"]]
    for m in sorted(estimate.models.values(), key=lambda m: m.model):
        table.append(_row(m.model, m, "**" if m.batch_discount_assumed else ""))
    table.append(_total_row(estimate))
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
    if estimate.cached_tokens:
        lines.append(cache_note(estimate))
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


def cache_note(estimate: Estimate) -> str:
    """What the prompt cache could take off: its share of the input, and the costs with it."""
    cost = estimate.priced_cached_cost if estimate.partly_priced else estimate.cached_cost
    priced = " (the priced models)" if estimate.partly_priced else ""
    return (
        f"prompt cache: {estimate.cached_tokens:,} input tokens "
        f"({(estimate.cached_share or 0) * 100:.0f}%) are shared prefixes of 1,024+ tokens "
        f"the cache can serve after each group's first request: "
        f"{format_usd(cost(False))} concurrent, "
        f"{format_usd(cost(True))} batch with it{priced}"
    )


def estimate_line(estimate: Estimate, mode: str) -> str:
    """The estimate in one line, for `submit`: the job's mode first."""
    costs = {"concurrent": estimate.cost_concurrent, "batch": estimate.cost_batch}
    other = "batch" if mode == "concurrent" else "concurrent"
    about = "about " if estimate.sampled else ""
    partly = estimate.partly_priced
    if partly:  # the priced part, not a total of "unknown"
        costs = {"concurrent": estimate.priced_cost_concurrent, "batch": estimate.priced_cost_batch}
    priced = " for the priced models" if partly else ""
    line = (
        f"estimate: {about}{estimate.input_tokens:,} input + up to {estimate.output_tokens:,} "
        f"output tokens, {format_usd(costs[mode])}{priced} ({other} mode: "
        f"{format_usd(costs[other])})"
    )
    if estimate.cached_tokens:
        cached = estimate.priced_cached_cost if partly else estimate.cached_cost
        line += (
            f"; {format_usd(cached(mode == 'batch'))}{priced} if the prompt cache "
            f"serves the shared prefixes ({(estimate.cached_share or 0) * 100:.0f}% of the input)"
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
        "cached_tokens": estimate.cached_tokens,
        "cached_share": _share(estimate.cached_share),
        "cost_concurrent_cached_usd": _json_usd(estimate.cached_cost(batch=False)),
        "cost_batch_cached_usd": _json_usd(estimate.cached_cost(batch=True)),
        # what the models with a price cost (the total, when every model has one)
        "priced_cost_concurrent_usd": _json_usd(estimate.priced_cost_concurrent),
        "priced_cost_batch_usd": _json_usd(estimate.priced_cost_batch),
        "priced_cost_concurrent_cached_usd": _json_usd(estimate.priced_cached_cost(False)),
        "priced_cost_batch_cached_usd": _json_usd(estimate.priced_cached_cost(True)),
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
                "cached_tokens": m.cached_tokens,
                "cost_concurrent_cached_usd": _json_usd(m.cached_concurrent),
                "cost_batch_cached_usd": _json_usd(m.cached_batch),
                "batch_discount_assumed": m.batch_discount_assumed,
                "price_source": m.price_source,
            }
            for m in sorted(estimate.models.values(), key=lambda m: m.model)
        ],
    }
