"""A spending cap that is never overshot: reserve each request's worst case before sending.

The worst case is the prompt at the input rate plus the request's worst output (its cap, else
demand.WORST_CASE_OUTPUT) at the output rate. When the answer comes back, the reservation
is released and the real cost counted; a request whose outcome is unknown (a timeout after it
was sent) keeps its whole reservation, since it may have been billed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from batchrunner.demand import TokenDemand
from batchrunner.errors import UsageError
from batchrunner.pricing import PriceTable, Rates, rates_for, unpriced_reason


def worst_case_usd(rates: Rates, demand: TokenDemand) -> float:
    """The most a request can cost: its prompt, and its worst output (its cap, else
    demand.WORST_CASE_OUTPUT per answer)."""
    prompt = demand.prompt
    return (prompt * rates.input.at(prompt) + demand.worst_output * rates.output.at(prompt)) / 1e6


def worst_case_of(
    model: str, demand: TokenDemand, prices: PriceTable | None, batch: bool = False
) -> float | None:
    """`worst_case_usd` at the model's rates now; None when it has no price."""
    rates = rates_for(model, batch=batch, when=datetime.now(UTC), overrides=prices)
    return worst_case_usd(rates, demand) if rates is not None else None


@dataclass(frozen=True, slots=True)
class Reservation:
    usd: float


class Budget:
    """The job's limit, what its recorded attempts already spent, and what is in flight."""

    def __init__(
        self, limit_usd: float, spent_usd: float, prices: PriceTable | None, batch: bool = False
    ) -> None:
        self.limit_usd = limit_usd
        self.spent_usd = spent_usd
        self.reserved_usd = 0.0
        self._prices = prices
        self._batch = batch
        self._rates: dict[str, Rates] = {}

    def _rates_of(self, model: str) -> Rates:
        rates = self._rates.get(model)
        if rates is None:
            found = rates_for(
                model, batch=self._batch, when=datetime.now(UTC), overrides=self._prices
            )
            if found is None:
                why = unpriced_reason(model, self._prices)
                raise UsageError(
                    f'--budget needs a price for every model, and "{model}" has none: {why}. '
                    "Give its prices with --prices FILE (0 for a free one)"
                )
            rates = self._rates[model] = found
        return rates

    def check_models(self, models: list[str]) -> None:
        """Refuse to start when a model's cost cannot be bounded."""
        for model in models:
            self._rates_of(model)

    def worst_case(self, model: str, demand: TokenDemand) -> float:
        return worst_case_usd(self._rates_of(model), demand)

    def reserve(self, usd: float) -> Reservation | None:
        """Hold `usd` for one request, or None when that would pass the limit."""
        if self.spent_usd + self.reserved_usd + usd > self.limit_usd:
            return None
        self.reserved_usd += usd
        return Reservation(usd)

    def hold(self, usd: float) -> None:
        """Count what is already committed elsewhere (a submitted batch), even past the limit."""
        self.reserved_usd += usd

    def settle(self, reservation: Reservation, cost_usd: float | None, billed: bool) -> None:
        """Release a reservation and count what the request really cost.

        `billed` with no known cost (an unknown model's price, an answer lost after sending)
        counts the whole reservation: erring high keeps the cap a cap."""
        self.reserved_usd -= reservation.usd
        if cost_usd is not None:
            self.spent_usd += cost_usd
        elif billed:
            self.spent_usd += reservation.usd

    def describe(self) -> str:
        held = f", ${self.reserved_usd:.4f} held" if self.reserved_usd else ""
        return f"${self.spent_usd:.4f} of ${self.limit_usd:.4f} spent{held}"
