"""Synthetic telco-churn data, with scenarios that drift it in known ways.

The data imitate the public IBM Telco Customer Churn table (contracts, fibre that costs more,
blank ``TotalCharges`` for brand-new customers) plus device and network fields a mobile
operator's edge devices would see. Every value is drawn from its own random stream, so a
scenario changes exactly what it claims and the rest of the frame stays identical to the
no-drift frame of the same seed.

Inputs (the correlations that matter):

- ``contract`` drives ``tenure_months`` (month-to-month ~18 months on average, one-year ~38,
  two-year ~51; capped at 72). 1 % are brand-new customers with tenure 0 and no
  ``total_charges`` (NaN), like the blanks of the real table.
- ``monthly_charges`` = 18 + 6 per extra line + internet (DSL 22, fiber 48, none 0) + plan
  tier (standard 8, premium 18) + N(0, 4); ``total_charges`` ≈ tenure × monthly × (1 ± 5 %).
- ``dropped_calls`` ~ Poisson(rate of the region's network × device type × device age);
  every dropped call leads to a support call with probability 0.3, on top of a base rate
  that is higher for fiber and seniors.
- ``late_payments`` (last 12 months) depends on ``payment_method`` (electronic check most).

Churn mechanism (logistic; ``P(churn) = 1 / (1 + exp(-z))``)::

    z = -1.85
        + 1.00 [contract = month-to-month]   - 1.10 [contract = two-year]
        - 0.035 tenure_months                + 0.025 (monthly_charges - 60)
        + 0.45 [internet = fiber]            + 0.35 [payment = electronic-check]
        + 0.30 support_calls                 + 0.12 dropped_calls
        + 0.25 late_payments                 + 0.30 senior_citizen
        - 0.15 (num_lines - 1)               + 0.008 (device_age_months - 20)

which gives about 23 % churn. Each row's label is ``u < P(churn)`` with ``u`` uniform from a
stream of its own, so a scenario that raises ``z`` for a row can only turn "No" into "Yes".

Scenarios (``s`` = ``drift_strength``; ``s = 0`` reproduces the no-drift frame exactly):

- ``price_increase``: monthly and total charges × (1 + 0.2 s). Covariate shift: the churn
  mechanism is unchanged, churn rises through the price term.
- ``network_outage``: in region "south", extra dropped calls ~ Poisson(4 s × the usual rate)
  and extra support calls ~ Poisson(1.5 s) (plus 0.3 per extra dropped call). Churn rises
  there through the same mechanism; the other regions are untouched.
- ``competitor_offer``: concept drift. The inputs are identical to the no-drift frame; a
  competitor courts loyal fiber customers, adding ``s × 3.0 × [fiber] × min(1, tenure / 36)``
  to ``z``, so long-tenure fiber customers, formerly safe, now churn.
- ``new_segment``: a share ``min(1, 0.25 s)`` of rows get ``device_type = "satellite"``, a
  value the vocabulary never held; those customers see one extra dropped call a month on
  average and ``z`` + 0.5.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from edgefleet.edge.schema import CategoricalFeature, FeatureSchema, NumericFeature
from edgefleet.errors import InputError

TARGET = "churn"
CLASSES = ("No", "Yes")

SCENARIOS: dict[str, str] = {
    "none": "no drift: the reference distribution and churn mechanism",
    "price_increase": "monthly and total charges up ~20 % (x drift strength); churn rises",
    "network_outage": "dropped and support calls spike in region 'south'; churn rises there",
    "competitor_offer": "concept drift: same inputs, but long-tenure fiber customers now churn",
    "new_segment": "device_type 'satellite', never seen in training, in ~25 % of rows",
}

OUTAGE_REGION = "south"
NEW_DEVICE_TYPE = "satellite"
NEW_CUSTOMER_SHARE = 0.01
MAX_TENURE = 72
_LINE_SHARES = (0.45, 0.30, 0.15, 0.07, 0.03)  # 1 to 5 lines

CONTRACTS = ("month-to-month", "one-year", "two-year")
INTERNET = ("DSL", "fiber", "none")
PAYMENT_METHODS = ("bank-transfer", "credit-card", "electronic-check", "mailed-check")
REGIONS = ("central", "east", "north", "south", "west")
DEVICE_TYPES = ("feature-phone", "hotspot", "smartphone", "tablet")
PLAN_TIERS = ("basic", "premium", "standard")

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
TextArray = npt.NDArray[np.object_]


@dataclass(frozen=True)
class GeneratedData:
    """A generated table (feature columns in schema order, then ``churn``) and its schema."""

    frame: pd.DataFrame
    schema: FeatureSchema

    @property
    def churn_rate(self) -> float:
        return float((self.frame[TARGET] == CLASSES[1]).mean())


def telco_schema() -> FeatureSchema:
    """The schema of generated data. Bounds are what is physically plausible, wider than
    anything the generator draws, so drift shows up as drift rather than as refused records."""
    numeric = (
        NumericFeature("tenure_months", 0.0, 240.0),
        NumericFeature("monthly_charges", 0.0, 1000.0),
        NumericFeature("total_charges", 0.0, 250_000.0, allow_missing=True),
        NumericFeature("data_usage_gb", 0.0, 10_000.0),
        NumericFeature("dropped_calls", 0.0, 1000.0),
        NumericFeature("support_calls", 0.0, 1000.0),
        NumericFeature("num_lines", 1.0, 50.0),
        NumericFeature("avg_call_minutes", 0.0, 1440.0),
        NumericFeature("late_payments", 0.0, 12.0),
        NumericFeature("device_age_months", 0.0, 240.0),
        NumericFeature("senior_citizen", 0.0, 1.0),
    )
    categorical = (
        CategoricalFeature("contract", CONTRACTS),
        CategoricalFeature("internet_service", INTERNET),
        CategoricalFeature("payment_method", PAYMENT_METHODS),
        CategoricalFeature("region", REGIONS),
        CategoricalFeature("device_type", DEVICE_TYPES),
        CategoricalFeature("plan_tier", PLAN_TIERS),
    )
    return FeatureSchema(features=numeric + categorical, target=TARGET, classes=CLASSES)


def generate(
    rows: int, *, seed: int = 0, scenario: str = "none", drift_strength: float = 1.0
) -> GeneratedData:
    """Generate ``rows`` customers; the same arguments always give the identical frame
    (with the same numpy: numpy keeps its seeding stable, not every sampler's output)."""
    _check_arguments(rows, seed, scenario, drift_strength)
    strength = 0.0 if scenario == "none" else float(drift_strength)
    streams = _Streams(seed, rows)
    columns = _draw_inputs(streams, scenario, strength)
    logit = _churn_logit(columns) + _concept_shift(columns, scenario, strength)
    churned = streams.uniform("churn") < _sigmoid(logit)
    schema = telco_schema()
    frame = pd.DataFrame({name: _clip(columns[name], schema, name) for name in schema.names})
    frame[TARGET] = pd.Series(np.where(churned, CLASSES[1], CLASSES[0]), dtype=object)
    return GeneratedData(frame=frame, schema=schema)


def _check_arguments(rows: int, seed: int, scenario: str, drift_strength: float) -> None:
    if scenario not in SCENARIOS:
        raise InputError(f"unknown scenario {scenario!r}; choose one of: {', '.join(SCENARIOS)}")
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
        raise InputError(f"rows must be a positive whole number, not {rows!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputError(f"seed must be a whole number >= 0, not {seed!r}")
    if not math.isfinite(drift_strength) or drift_strength < 0:
        raise InputError(f"drift strength must be a finite number >= 0, not {drift_strength!r}")


class _Streams:
    """One independent random stream per named quantity.

    Named streams (rather than one generator drawn in sequence) keep a scenario's changes
    local: altering how one column is drawn never shifts the draws of any other column.
    """

    def __init__(self, seed: int, rows: int) -> None:
        self.seed = seed
        self.rows = rows

    def rng(self, name: str) -> np.random.Generator:
        # crc32 is stable across processes and Python versions, unlike hash().
        return np.random.default_rng([self.seed, zlib.crc32(name.encode())])

    def uniform(self, name: str) -> FloatArray:
        return self.rng(name).random(self.rows)

    def normal(self, name: str, scale: float) -> FloatArray:
        return self.rng(name).normal(0.0, scale, self.rows)

    def choice(self, name: str, values: Sequence[str], probabilities: Sequence[float]) -> TextArray:
        picked = self.rng(name).choice(len(values), size=self.rows, p=probabilities)
        return np.asarray(values, dtype=object)[picked]

    def poisson(self, name: str, rate: FloatArray | float) -> IntArray:
        return self.rng(name).poisson(rate, self.rows).astype(np.int64)


Columns = dict[str, FloatArray | IntArray | TextArray]


def _draw_inputs(streams: _Streams, scenario: str, strength: float) -> Columns:
    columns: Columns = {}
    columns.update(_draw_account(streams))
    columns.update(_draw_charges(streams, columns, scenario, strength))
    columns.update(_draw_device(streams, scenario, strength))
    columns.update(_draw_network(streams, columns, scenario, strength))
    columns.update(_draw_behaviour(streams, columns))
    return columns


def _draw_account(streams: _Streams) -> Columns:
    contract = streams.choice("contract", CONTRACTS, (0.55, 0.21, 0.24))
    tenure = _draw_tenure(streams, contract)
    internet = streams.choice("internet_service", INTERNET, (0.34, 0.44, 0.22))
    # Premium plans go with fast internet; customers without internet rarely buy them.
    tier_if_internet = streams.choice("plan_tier", PLAN_TIERS, (0.38, 0.22, 0.40))
    tier_if_none = streams.choice("plan_tier_no_internet", PLAN_TIERS, (0.65, 0.05, 0.30))
    return {
        "contract": contract,
        "tenure_months": tenure,
        "internet_service": internet,
        "plan_tier": np.where(internet == "none", tier_if_none, tier_if_internet),
        "payment_method": streams.choice(
            "payment_method", PAYMENT_METHODS, (0.22, 0.21, 0.34, 0.23)
        ),
        "region": streams.choice("region", REGIONS, (0.18, 0.20, 0.22, 0.20, 0.20)),
        "num_lines": 1 + streams.rng("num_lines").choice(5, streams.rows, p=_LINE_SHARES),
        "senior_citizen": (streams.uniform("senior_citizen") < 0.16).astype(np.int64),
    }


def _draw_tenure(streams: _Streams, contract: TextArray) -> IntArray:
    # Gamma shapes per contract: month-to-month customers come and go, two-year ones stay.
    shape = _lookup(contract, {"month-to-month": 1.3, "one-year": 3.0, "two-year": 6.0})
    scale = _lookup(contract, {"month-to-month": 14.0, "one-year": 13.0, "two-year": 9.2})
    months = 1 + np.floor(streams.rng("tenure_months").gamma(shape, scale))
    tenure = np.minimum(months, MAX_TENURE).astype(np.int64)
    brand_new = streams.uniform("brand_new") < NEW_CUSTOMER_SHARE
    return np.where(brand_new, 0, tenure)


def _draw_charges(streams: _Streams, columns: Columns, scenario: str, strength: float) -> Columns:
    internet = _lookup(columns["internet_service"], {"DSL": 22.0, "fiber": 48.0, "none": 0.0})
    tier = _lookup(columns["plan_tier"], {"basic": 0.0, "standard": 8.0, "premium": 18.0})
    lines = 6.0 * (columns["num_lines"].astype(np.float64) - 1)
    monthly = 18.0 + lines + internet + tier + streams.normal("monthly_charges", 4.0)
    monthly = np.maximum(monthly, 15.0)
    tenure = columns["tenure_months"].astype(np.float64)
    total = tenure * monthly * (1.0 + streams.normal("total_charges", 0.05))
    # Brand-new customers have not been billed yet: the real table leaves these blank.
    total = np.where(tenure == 0, np.nan, np.maximum(total, 0.0))
    if scenario == "price_increase":
        factor = 1.0 + 0.2 * strength
        monthly, total = monthly * factor, total * factor
    return {"monthly_charges": np.round(monthly, 2), "total_charges": np.round(total, 2)}


def _draw_device(streams: _Streams, scenario: str, strength: float) -> Columns:
    device = streams.choice("device_type", DEVICE_TYPES, (0.12, 0.16, 0.62, 0.10))
    if scenario == "new_segment":
        share = min(1.0, 0.25 * strength)
        device = np.where(streams.uniform("new_segment") < share, NEW_DEVICE_TYPE, device)
    age = np.floor(streams.rng("device_age_months").gamma(2.0, 10.0, streams.rows))
    return {"device_type": device, "device_age_months": np.minimum(age, 120).astype(np.int64)}


def _draw_network(streams: _Streams, columns: Columns, scenario: str, strength: float) -> Columns:
    region_rate = _lookup(
        columns["region"],
        {"north": 0.8, "south": 1.2, "east": 1.0, "west": 0.9, "central": 0.6},
    )
    device_rate = _lookup(
        columns["device_type"],
        {"smartphone": 1.0, "feature-phone": 1.2, "tablet": 0.8, "hotspot": 1.1},
        default=1.0,
    )
    age = columns["device_age_months"].astype(np.float64)
    usual_rate = region_rate * device_rate * (1.0 + age / 48.0)
    dropped = streams.poisson("dropped_calls", usual_rate)
    support = streams.poisson("support_calls", _support_base_rate(columns))
    support += streams.rng("support_from_dropped").binomial(dropped, 0.3)
    extra_dropped, extra_support = _scenario_calls(streams, columns, usual_rate, scenario, strength)
    return {"dropped_calls": dropped + extra_dropped, "support_calls": support + extra_support}


def _support_base_rate(columns: Columns) -> FloatArray:
    fiber = _flag(columns["internet_service"], "fiber")
    return 0.4 + 0.3 * fiber + 0.2 * columns["senior_citizen"].astype(np.float64)


def _scenario_calls(
    streams: _Streams, columns: Columns, usual_rate: FloatArray, scenario: str, strength: float
) -> tuple[IntArray, IntArray]:
    """Extra dropped and support calls; a sum of Poissons, so unaffected rows stay as drawn."""
    none = np.zeros(streams.rows, dtype=np.int64)
    if scenario == "network_outage":
        affected = columns["region"] == OUTAGE_REGION
        dropped_rate = np.where(affected, 4.0 * strength * usual_rate, 0.0)
        support_rate = np.where(affected, 1.5 * strength, 0.0)
    elif scenario == "new_segment":
        affected = columns["device_type"] == NEW_DEVICE_TYPE
        dropped_rate = np.where(affected, 1.0, 0.0)
        support_rate = np.zeros(streams.rows)
    else:
        return none, none
    dropped = streams.poisson("scenario_dropped", dropped_rate)
    support = streams.poisson("scenario_support", support_rate)
    support += streams.rng("scenario_support_from_dropped").binomial(dropped, 0.3)
    return dropped, support


def _draw_behaviour(streams: _Streams, columns: Columns) -> Columns:
    usage_median = _lookup(columns["internet_service"], {"DSL": 25.0, "fiber": 60.0, "none": 3.0})
    premium = np.where(columns["plan_tier"] == "premium", 1.3, 1.0)
    usage = usage_median * premium * np.exp(streams.normal("data_usage_gb", 0.6))
    senior = columns["senior_citizen"].astype(np.float64)
    minutes = streams.rng("avg_call_minutes").gamma(2.0, 3.5, streams.rows) + 2.0 * senior
    late_rate = _lookup(
        columns["payment_method"],
        {"electronic-check": 1.0, "mailed-check": 0.6, "bank-transfer": 0.2, "credit-card": 0.2},
    )
    late = np.minimum(streams.poisson("late_payments", late_rate), 12)
    return {
        "data_usage_gb": np.round(usage, 1),
        "avg_call_minutes": np.round(minutes, 1),
        "late_payments": late,
    }


def _churn_logit(columns: Columns) -> FloatArray:
    """The churn mechanism of the module docstring (the no-drift relation)."""

    def num(name: str) -> FloatArray:
        return columns[name].astype(np.float64)

    def flag(name: str, value: str) -> FloatArray:
        return _flag(columns[name], value)

    return (
        -1.85
        + 1.00 * flag("contract", "month-to-month")
        - 1.10 * flag("contract", "two-year")
        - 0.035 * num("tenure_months")
        + 0.025 * (num("monthly_charges") - 60.0)
        + 0.45 * flag("internet_service", "fiber")
        + 0.35 * flag("payment_method", "electronic-check")
        + 0.30 * num("support_calls")
        + 0.12 * num("dropped_calls")
        + 0.25 * num("late_payments")
        + 0.30 * num("senior_citizen")
        - 0.15 * (num("num_lines") - 1.0)
        + 0.008 * (num("device_age_months") - 20.0)
    )


def _concept_shift(columns: Columns, scenario: str, strength: float) -> FloatArray:
    """What a scenario adds to the logit beyond the inputs it changed."""
    if scenario == "competitor_offer":
        fiber = _flag(columns["internet_service"], "fiber")
        loyalty = np.minimum(1.0, columns["tenure_months"].astype(np.float64) / 36.0)
        shift: FloatArray = strength * 3.0 * fiber * loyalty
        return shift
    if scenario == "new_segment":
        return 0.5 * _flag(columns["device_type"], NEW_DEVICE_TYPE)
    return np.zeros(len(columns["region"]))


def _lookup(
    values: FloatArray | IntArray | TextArray,
    table: Mapping[str, float],
    default: float | None = None,
) -> FloatArray:
    """Map category values to numbers; ``default`` for values outside ``table``."""
    out = np.full(len(values), np.nan if default is None else default)
    for key, number in table.items():
        out[values == key] = number
    return out


def _flag(values: FloatArray | IntArray | TextArray, value: str) -> FloatArray:
    """1.0 where ``values`` equals ``value``, else 0.0."""
    return np.asarray(values == value, dtype=np.float64)


def _sigmoid(z: FloatArray) -> FloatArray:
    result: FloatArray = 1.0 / (1.0 + np.exp(-z))
    return result


def _clip(
    values: FloatArray | IntArray | TextArray, schema: FeatureSchema, name: str
) -> pd.Series[Any]:
    """Keep numeric columns inside their declared validity range even at a large drift
    strength, so that generated data never carries values the schema refuses."""
    feature = schema.feature(name)
    if isinstance(feature, NumericFeature):
        return pd.Series(np.clip(values, feature.minimum, feature.maximum))
    return pd.Series(values, dtype=object)
