"""Usage -> cost in USD, offline and per item (pure, apart from the caches).

Prices come from, in this order: the user's price file (`--prices FILE`, `load_price_file`),
batchrunner's own corrections (`prices_overrides.toml`, shipped in the package), then the data
bundled with genai-prices (OpenAI's table first, then any provider whose models match the name).
genai-prices' `UpdatePrices` is never started: nothing here touches the network.

Billing rules, as OpenAI reports usage:

- input tokens include the cached ones: (input - cached) at the input rate, cached at the cached
  rate (the input rate when the model has none);
- output tokens already include reasoning tokens: all of them at the output rate, once;
- a model nobody prices gives None, never 0; so does an item with no usage at all.

Batch: genai-prices holds batch rates (price_context {"processing": "batch"}) only for the
models and dates it verified them for (OpenAI's from 2026-10-14), and otherwise silently returns
the standard price. Here a batch cost never falls back to the standard price: without a batch
rate, OpenAI's documented 50% Batch API discount is applied to input and output, the cached rate
is kept but capped at the discounted input rate (errs high, not low), and the result carries
`batch_discount_assumed=True`. A price file entry without batch rates is treated the same way.
A model the Batch API does not take (dialects.openai.batchless_reason: realtime, audio,
chatgpt-4o-latest, ...) gets no assumed batch rate: its batch price is unknown.

Rates are looked up once per (model, mode, day) and cached: pricing an item is a few
multiplications, where genai-prices' own `calc_price` takes about 0.1 ms.
"""

from __future__ import annotations

import functools
import json
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, time
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any

import genai_prices
from genai_prices.types import (
    ClauseAnd,
    ClauseContains,
    ClauseEndsWith,
    ClauseEquals,
    ClauseOr,
    ClauseStartsWith,
    PriceCalculation,
    TieredPrices,
    TimeOfDateConstraint,
)

from batchrunner.dialects.openai import batchless_reason
from batchrunner.errors import UsageError
from batchrunner.settings import RunSettings
from batchrunner.usage import Usage

BATCH_DISCOUNT = 0.5  # OpenAI's Batch API: "50% off inputs and outputs"
BATCH_CONTEXT = {"processing": "batch"}
PRICE_KEYS = (
    "input",
    "cached_input",
    "output",
    "batch_input",
    "batch_cached_input",
    "batch_output",
)
_DATE_SUFFIX = re.compile(r"-\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True, slots=True)
class Rate:
    """USD per 1M tokens. Each tier (start, rate) replaces the base rate for the whole request
    once its input tokens exceed `start` (genai-prices' rule, e.g. gpt-5.4 above 272k)."""

    base: float
    tiers: tuple[tuple[int, float], ...] = ()

    def at(self, input_tokens: int) -> float:
        for start, rate in reversed(self.tiers):
            if input_tokens > start:
                return rate
        return self.base

    def scaled(self, factor: float) -> Rate:
        return Rate(self.base * factor, tuple((s, r * factor) for s, r in self.tiers))


@dataclass(frozen=True, slots=True)
class Cost:
    """An item's cost in USD, split by kind of token, and where the rates came from."""

    usd: float
    input_usd: float  # uncached input
    cached_input_usd: float
    output_usd: float
    source: str  # where the rates came from
    batch_discount_assumed: bool = False


@dataclass(frozen=True, slots=True)
class Rates:
    """One model's rates in one mode (standard or batch)."""

    input: Rate
    cached_input: Rate
    output: Rate
    source: str
    batch_discount_assumed: bool = False

    def cost(self, usage: Usage) -> Cost:
        total_in = max(usage.input_tokens or 0, 0)
        cached = min(max(usage.cached_tokens or 0, 0), total_in)
        output = max(usage.output_tokens or 0, 0)  # reasoning tokens are inside it
        input_usd = (total_in - cached) * self.input.at(total_in) / 1e6
        cached_usd = cached * self.cached_input.at(total_in) / 1e6
        output_usd = output * self.output.at(total_in) / 1e6
        return Cost(
            usd=input_usd + cached_usd + output_usd,
            input_usd=input_usd,
            cached_input_usd=cached_usd,
            output_usd=output_usd,
            source=self.source,
            batch_discount_assumed=self.batch_discount_assumed,
        )

    @property
    def free(self) -> bool:
        return all(rate == Rate(0.0) for rate in (self.input, self.cached_input, self.output))

    def assumed_batch(self) -> Rates:
        """The standard rates with OpenAI's documented batch discount applied explicitly."""
        discounted_input = self.input.scaled(BATCH_DISCOUNT)
        cached = min(self.cached_input, discounted_input, key=lambda r: r.base)
        return replace(
            self,
            input=discounted_input,
            cached_input=cached,
            output=self.output.scaled(BATCH_DISCOUNT),
            batch_discount_assumed=True,
        )


@dataclass(frozen=True, slots=True)
class PriceEntry:
    """One model's line in a price file, USD per 1M tokens."""

    input: float
    output: float
    cached_input: float | None = None
    batch_input: float | None = None
    batch_cached_input: float | None = None
    batch_output: float | None = None


@functools.lru_cache(maxsize=1024)
def _entry_rates(entry: PriceEntry, batch: bool, source: str) -> Rates:
    cached = entry.input if entry.cached_input is None else entry.cached_input
    standard = Rates(Rate(entry.input), Rate(cached), Rate(entry.output), source)
    if not batch:
        return standard
    if entry.batch_input is None or entry.batch_output is None:
        return standard.assumed_batch()
    batch_cached = entry.batch_cached_input
    if batch_cached is None:
        batch_cached = min(cached, entry.batch_input)
    return Rates(Rate(entry.batch_input), Rate(batch_cached), Rate(entry.batch_output), source)


@dataclass(frozen=True)
class PriceTable:
    """Prices by model name (lower case); a dated name such as gpt-4o-2024-08-06 also finds
    an entry for gpt-4o."""

    entries: Mapping[str, PriceEntry]
    source: str
    # --price-as: a name (an Azure deployment, a proxy's alias) priced as a known model; "*"
    # for every name the job uses
    price_as: Mapping[str, str] = field(default_factory=dict)
    # False for a job on a local or self-hosted server: only this table and --price-as price
    hosted: bool = True

    def priced_as(self, model: str) -> str:
        return self.price_as.get(model) or self.price_as.get("*") or model

    def maps(self, model: str) -> bool:
        """Whether --price-as names a known model for this name."""
        return model in self.price_as or "*" in self.price_as

    def find(self, model: str) -> PriceEntry | None:
        name = model.lower()
        entry = self.entries.get(name)
        if entry is None:
            entry = self.entries.get(_DATE_SUFFIX.sub("", name))
        return entry


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return "a string" if isinstance(value, str) else f"a {type(value).__name__}"


def _entry(where: str, model: str, raw: object) -> PriceEntry:
    here = f'{where}: model "{model}"'
    if not isinstance(raw, Mapping):
        raise UsageError(f"{here}: expected a table of prices, got {_kind(raw)}")
    for key, value in raw.items():
        if isinstance(value, Mapping):  # TOML read [gpt-4.1-mini] as [gpt-4] > [1-mini]
            raise UsageError(
                f'{here}: a table inside a model; quote names with dots: ["{model}.{key}"]'
            )
        if key not in PRICE_KEYS:
            raise UsageError(f'{here}: unknown key "{key}" (expected {", ".join(PRICE_KEYS)})')
    values: dict[str, float] = {}
    for key, value in raw.items():
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or not math.isfinite(value) or value < 0:
            shown = json.dumps(value) if ok else _kind(value)
            raise UsageError(f'{here}: "{key}" must be a number >= 0 (USD per 1M), got {shown}')
        values[key] = float(value)
    for key in ("input", "output"):
        if key not in values:
            raise UsageError(f'{here}: missing "{key}" (USD per 1M tokens)')
    if ("batch_input" in values) != ("batch_output" in values):
        raise UsageError(f'{here}: give both "batch_input" and "batch_output", or neither')
    if "batch_cached_input" in values and "batch_input" not in values:
        raise UsageError(f'{here}: "batch_cached_input" needs "batch_input" and "batch_output"')
    return PriceEntry(**values)


def _parse(where: str, raw: bytes, suffix: str) -> object:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UsageError(f"{where}: not a UTF-8 text file") from None
    as_json = suffix == ".json" or (suffix != ".toml" and text.lstrip().startswith("{"))
    try:
        return json.loads(text) if as_json else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"{where}: invalid {'JSON' if as_json else 'TOML'}: {exc}") from None


def _table(where: str, raw: bytes, suffix: str) -> PriceTable:
    data = _parse(where, raw, suffix)
    if not isinstance(data, Mapping) or not data:
        raise UsageError(
            f"{where}: expected one entry per model, such as "
            '{"gpt-4o-mini": {"input": 0.15, "output": 0.6}}'
        )
    return price_table_from(data, where)


def price_table_from(data: Mapping[str, Any], source: str) -> PriceTable:
    """A table from the mapping a price file holds (as stored with a job's options)."""
    return PriceTable({str(m).lower(): _entry(source, str(m), v) for m, v in data.items()}, source)


def job_price_table(settings: RunSettings) -> PriceTable | None:
    """A job's --prices table and --price-as names, as stored with its settings, and whether
    the hosted APIs' prices apply; None when the library's prices alone apply."""
    aliases = dict(settings.price_as)
    hosted = settings.hosted_prices is not False  # a job from before the rule: hosted
    if not settings.prices and not aliases and hosted:
        return None
    prices = settings.prices
    table = price_table_from(prices, "--prices") if prices else PriceTable({}, "--price-as")
    return replace(table, price_as=aliases, hosted=hosted)


def price_table_as_dict(table: PriceTable) -> dict[str, dict[str, float]]:
    """The table as plain data, to store with a job so that a resume prices alike."""
    return {
        model: {k: v for k, v in asdict(entry).items() if v is not None}
        for model, entry in table.entries.items()
    }


def load_price_file(path: str | Path) -> PriceTable:
    """Read a JSON or TOML price file: per model, `input`, `output` and optionally
    `cached_input`, `batch_input`, `batch_cached_input`, `batch_output`, in USD per 1M tokens.
    Raise `UsageError` naming the file, the model and what is wrong."""
    where = str(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{where}: no such price file") from None
    except OSError as exc:
        raise UsageError(f"{where}: cannot read the price file: {exc.strerror}") from None
    return _table(where, raw, Path(path).suffix.lower())


@functools.cache
def corrections() -> PriceTable:
    """batchrunner's own corrections to genai-prices (prices_overrides.toml)."""
    raw = resources.files("batchrunner").joinpath("prices_overrides.toml").read_bytes()
    return _table("batchrunner/prices_overrides.toml", raw, ".toml")


def _calc(model: str, at: datetime, batch: bool) -> PriceCalculation | None:
    """genai-prices' answer for zero usage: it carries the model and its resolved prices."""
    for provider_id in ("openai", None):  # OpenAI's own table first, then by model name
        try:
            return genai_prices.calc_price(
                genai_prices.Usage(),
                model,
                provider_id=provider_id,
                genai_request_timestamp=at,
                price_context=BATCH_CONTEXT if batch else None,
            )
        except LookupError:
            continue
    return None


def _has_batch_rate(calc: PriceCalculation, at: datetime) -> bool:
    """Did genai-prices apply a batch variant, or quietly return the standard price?"""
    if not any(calc.model is m for m in calc.provider.models):
        return False  # a fallback provider's model: genai-prices ignores the context
    return any(
        variant.when == BATCH_CONTEXT
        and (variant.constraint is None or variant.constraint.active(at))
        for variant in calc.model.price_variants or ()
    )


def _rate(value: Decimal | TieredPrices | None) -> Rate | None:
    if value is None:
        return None
    if isinstance(value, TieredPrices):
        return Rate(float(value.base), tuple((t.start, float(t.price)) for t in value.tiers))
    return Rate(float(value))


# What a name may add to a priced model's own name and still be that model: dates (2024-08-06,
# 20241022, 0125, 09-2025, 05-06, Vertex's @20241022), versions (-001) and channels, one after
# another (gpt-4o-realtime-preview-2024-12-17, gemini-2.5-pro-preview-05-06).
_STAMP = re.compile(
    r"(?:-\d{4}-\d{2}-\d{2}|-\d{8}|-\d{4}|-\d{2}-\d{4}|-\d{2}-\d{2}|-00\d|-latest|-preview"
    r"|@\d{8}|@latest)*"
)
# Where a table's prefix may stop being the model's own name: `gpt-5-nano-` and
# `claude-sonnet-4-2025` are a name and the start of a date.
_CUT = re.compile(r"[-@]")


def _stamped(name: str, prefix: str) -> bool:
    """Whether `name` is `prefix`'s model plus a stamp, the prefix perhaps ending inside it."""
    if not name.startswith(prefix):
        return False
    cuts = [m.start() for m in _CUT.finditer(prefix)] + [len(prefix)]
    return any(_STAMP.fullmatch(name[cut:]) for cut in cuts)


def _own_name(name: str, provider: str) -> str:
    """The part of a model name the price table judges: `ft:BASE:ORG:SUFFIX:ID` is `ft:BASE`,
    and `google/gemini-2.0-flash-001` (Vertex's OpenAI-compatible name) is its model's name
    when the prefix is the provider the table found."""
    name = name.lower()
    if name.startswith("ft:"):
        return ":".join(name.split(":")[:2])
    owner, _, rest = name.partition("/")
    return rest if rest and owner == provider.lower() else name


def _names_the_model(name: str, calc: PriceCalculation) -> bool:
    """Whether `name` is the priced model's own name: one its table spells out, or one of its
    stems followed by a date, a version or a channel. Anything looser (a longer name that starts
    the same, a word within, a pattern) may be another model: `deepseek-r1:7b` on a laptop is
    not DeepSeek's hosted reasoner."""
    return _clause_names(_own_name(name, calc.provider.id), name.lower(), calc.model.match)


def _clause_names(name: str, full_name: str, match: object) -> bool:
    if isinstance(match, ClauseEquals | ClauseEndsWith):
        text = match.equals if isinstance(match, ClauseEquals) else match.ends_with
        return text.lower() == name
    if isinstance(match, ClauseStartsWith | ClauseContains):
        text = match.starts_with if isinstance(match, ClauseStartsWith) else match.contains
        return _stamped(name, text.lower())
    if isinstance(match, ClauseOr):
        return any(_clause_names(name, full_name, clause) for clause in match.or_)
    if isinstance(match, ClauseAnd):
        return match.is_match(full_name) and any(
            _clause_names(name, full_name, clause) for clause in match.and_
        )
    return False


@functools.lru_cache(maxsize=1024)
def loose_match(model: str) -> str | None:
    """The model genai-prices would price `model` as, when it matches it only loosely (and so
    prices it not at all, unless a price file does): for saying why a model is unpriced."""
    calc = _calc(model, datetime.now(UTC), False)
    if calc is None or _names_the_model(model, calc):
        return None
    return f"{calc.provider.id}'s {calc.model.id}"


@functools.lru_cache(maxsize=1024)
def _priced_by_image_tokens(model: str) -> bool:
    """Whether the library prices the model's image tokens apart (gpt-image, realtime): usage
    does not split them out, so no single input and output rate is its price."""
    calc = _calc(model, datetime.now(UTC), False)
    if calc is None or not _names_the_model(model, calc):
        return False
    prices = calc.model_price
    return prices.input_image_mtok is not None or prices.output_image_mtok is not None


NO_PRICE = "no price known"
LOCAL_SERVER = (
    "served by a local or self-hosted server, where hosted prices do not apply; "
    "--hosted-prices if it forwards to a paid API"
)
IMAGE_TOKENS = "its image tokens have prices of their own, which usage does not split out"


def unpriced_reason(model: str, table: PriceTable | None = None) -> str:
    """Why a model has no price, in a few words (`table`: the job's, as rates_for was given)."""
    if table is not None and table.maps(model):
        known = table.priced_as(model)
        return f"--price-as {known}, which has no price: {unpriced_reason(known)}"
    if table is not None and not table.hosted:
        return LOCAL_SERVER
    if _priced_by_image_tokens(model):
        return IMAGE_TOKENS
    loose = loose_match(model)
    if loose is not None:
        return f"genai-prices matches it only loosely, to {loose}"
    return NO_PRICE


def unpriced_note(models: list[str], table: PriceTable | None = None) -> str:
    """`no price known for a, b (b: ...)`: the models, and why where there is more to say."""
    return describe_unpriced({m: unpriced_reason(m, table) for m in models})


def describe_unpriced(reasons: Mapping[str, str]) -> str:
    """The note for models and their reasons (as `status --json` keeps them)."""
    models = ", ".join(reasons)
    if len(set(reasons.values())) == 1 and NO_PRICE not in reasons.values():
        return f"no price known for {models}: {next(iter(reasons.values()))}"
    told = [f"{m}: {reason}" for m, reason in reasons.items() if reason != NO_PRICE]
    return f"no price known for {models}" + (f" ({'; '.join(told)})" if told else "")


@functools.lru_cache(maxsize=4096)
def _library_rates_at(model: str, batch: bool, at: datetime) -> Rates | None:
    calc = _calc(model, at, batch)
    if calc is None or not _names_the_model(model, calc) or _priced_by_image_tokens(model):
        return None
    prices = calc.model_price
    input_rate = _rate(prices.input_mtok)
    if input_rate is None:  # not priced per token (images, per request, ...): unknown
        return None
    rates = Rates(
        input=input_rate,
        cached_input=_rate(prices.cache_read_mtok) or input_rate,
        output=_rate(prices.output_mtok) or Rate(0.0),  # embeddings have no output price
        source=f"genai-prices {genai_prices.__version__} ({calc.provider.id})",
    )
    if batch and not _has_batch_rate(calc, at):
        return rates.assumed_batch()
    return rates


@functools.lru_cache(maxsize=1024)
def _varies_within_a_day(model: str) -> bool:
    """True for the few models with time-of-day prices (DeepSeek's off-peak hours)."""
    calc = _calc(model, datetime.now(UTC), False)
    if calc is None:
        return False
    info = calc.model
    constraints = [p.constraint for p in info.prices] if isinstance(info.prices, list) else []
    constraints += [v.constraint for v in info.price_variants or ()]
    return any(isinstance(c, TimeOfDateConstraint) for c in constraints)


def _library_rates(model: str, batch: bool, when: datetime) -> Rates | None:
    when = when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)
    if _varies_within_a_day(model):
        return _library_rates_at(model, batch, when.replace(second=0, microsecond=0))
    return _library_rates_at(model, batch, datetime.combine(when.date(), time(), UTC))


def rates_for(
    model: str,
    *,
    batch: bool = False,
    when: datetime | None = None,
    overrides: PriceTable | None = None,
) -> Rates | None:
    """A model's rates for requests made at `when` (default now), or None if none is known.
    On a local server (`overrides.hosted` False) a name is priced only by the user. A model
    the Batch API does not take has no assumed batch rate (only one a price file gives)."""
    rates: Rates | None
    if overrides is not None and (entry := overrides.find(overrides.priced_as(model))):
        model = overrides.priced_as(model)
        rates = _entry_rates(entry, batch, overrides.source)
    elif overrides is not None and not overrides.hosted and not overrides.maps(model):
        return None
    else:
        model = overrides.priced_as(model) if overrides is not None else model
        fixes = corrections()
        entry = fixes.find(model)
        if entry is not None:
            rates = _entry_rates(entry, batch, fixes.source)
        else:
            rates = _library_rates(model, batch, when or datetime.now(UTC))
    if rates is not None and rates.batch_discount_assumed and batchless_reason(model):
        return None
    return rates


class CacheSavings:
    """What cached input saved against the uncached input price, model by model, at today's
    base rates: each model's rates looked up once (status sums it, export usage per item)."""

    def __init__(self, *, batch: bool = False, overrides: PriceTable | None = None) -> None:
        self._batch = batch
        self._overrides = overrides
        self._per_token: dict[str, float | None] = {}

    def usd(self, model: str, cached_tokens: int | None) -> float | None:
        """None when no answer said how many tokens were cached, or the model has no price."""
        if not cached_tokens:
            return None if cached_tokens is None else 0.0
        if model not in self._per_token:
            rates = rates_for(model, batch=self._batch, overrides=self._overrides)
            self._per_token[model] = (
                None
                if rates is None
                else max(0.0, rates.input.base - rates.cached_input.base) / 1e6
            )
        per_token = self._per_token[model]
        return None if per_token is None else cached_tokens * per_token


def price_item(
    model: str,
    usage: Usage,
    *,
    batch: bool = False,
    when: datetime | None = None,
    overrides: PriceTable | None = None,
) -> Cost | None:
    """The cost of one item's usage, or None when its usage or the model's price is unknown (a
    free model costs nothing whatever its usage: moderations report none)."""
    rates = rates_for(model, batch=batch, when=when, overrides=overrides)
    if rates is None:
        return None
    if usage.input_tokens is None and usage.output_tokens is None and not rates.free:
        return None
    return rates.cost(usage)
