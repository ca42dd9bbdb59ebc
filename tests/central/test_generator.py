"""The synthetic telco-churn generator: determinism, realism, and that each scenario drifts
what it claims and nothing else."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from edgefleet.central.data.generator import (
    NEW_DEVICE_TYPE,
    OUTAGE_REGION,
    SCENARIOS,
    GeneratedData,
    generate,
)
from edgefleet.central.data.loader import load_training_table, read_table
from edgefleet.cli import cmd_data
from edgefleet.edge.schema import CategoricalFeature, NumericFeature
from edgefleet.errors import DataError, InputError

ROWS = 4000
DRIFTS = [name for name in SCENARIOS if name != "none"]


@pytest.fixture(scope="module")
def base() -> GeneratedData:
    return generate(ROWS, seed=11)


@pytest.fixture(scope="module")
def drifted() -> dict[str, GeneratedData]:
    return {name: generate(ROWS, seed=11, scenario=name) for name in DRIFTS}


def churn_rate(frame: pd.DataFrame) -> float:
    return float((frame["churn"] == "Yes").mean())


# ------------------------------------------------------------------ the base data


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_same_arguments_give_the_identical_frame(scenario: str) -> None:
    first = generate(300, seed=5, scenario=scenario, drift_strength=0.7)
    second = generate(300, seed=5, scenario=scenario, drift_strength=0.7)
    pd.testing.assert_frame_equal(first.frame, second.frame)
    assert first.schema == second.schema


def test_another_seed_gives_another_frame() -> None:
    assert not generate(300, seed=1).frame.equals(generate(300, seed=2).frame)


def test_schema_has_at_least_15_features_and_the_frame_follows_it(base: GeneratedData) -> None:
    schema = base.schema
    assert schema.n_features >= 15
    assert schema.target == "churn"
    assert schema.classes == ("No", "Yes")
    assert list(base.frame.columns) == [*schema.names, "churn"]
    assert set(base.frame["churn"]) == {"No", "Yes"}
    assert len(schema.numeric_indices()) >= 10
    assert len(schema.categorical_indices()) >= 5


def test_values_fit_the_schema_and_bounds_are_wider_than_the_data(base: GeneratedData) -> None:
    for feature in base.schema.features:
        column = base.frame[feature.name]
        if isinstance(feature, NumericFeature):
            assert feature.out_of_range == "error"
            assert feature.minimum is not None
            assert feature.maximum is not None
            present = column.dropna()
            assert present.min() >= feature.minimum
            assert present.max() <= feature.maximum
            assert column.isna().any() == feature.allow_missing
        else:
            assert isinstance(feature, CategoricalFeature)
            assert set(column) == set(feature.vocabulary)


def test_churn_rate_is_between_15_and_30_percent() -> None:
    for seed in (0, 1, 2):
        assert 0.15 <= churn_rate(generate(5000, seed=seed).frame) <= 0.30


def test_brand_new_customers_have_no_total_charges(base: GeneratedData) -> None:
    frame = base.frame
    missing = frame["total_charges"].isna()
    assert 0.002 < missing.mean() < 0.03
    assert (frame.loc[missing, "tenure_months"] == 0).all()
    assert (frame.loc[~missing, "tenure_months"] > 0).all()


def test_correlations_are_realistic(base: GeneratedData) -> None:
    frame = base.frame.dropna()
    expected_total = frame["tenure_months"] * frame["monthly_charges"]
    assert np.corrcoef(frame["total_charges"], expected_total)[0, 1] > 0.98
    monthly = frame.groupby("internet_service")["monthly_charges"].mean()
    assert monthly["fiber"] > monthly["DSL"] > monthly["none"]
    tenure = frame.groupby("contract")["tenure_months"].mean()
    assert tenure["month-to-month"] < tenure["one-year"] < tenure["two-year"]
    churn = (frame["churn"] == "Yes").groupby(frame["contract"]).mean()
    assert churn["month-to-month"] > 2 * churn["two-year"]


# ------------------------------------------------------------------- scenarios


@pytest.mark.parametrize("scenario", DRIFTS)
def test_drift_strength_zero_is_the_undrifted_frame(scenario: str, base: GeneratedData) -> None:
    zero = generate(ROWS, seed=11, scenario=scenario, drift_strength=0.0)
    pd.testing.assert_frame_equal(zero.frame, base.frame)


def test_price_increase_raises_charges_and_churn(
    base: GeneratedData, drifted: dict[str, GeneratedData]
) -> None:
    frame = drifted["price_increase"].frame
    for column in ("monthly_charges", "total_charges"):
        ratio = frame[column].mean() / base.frame[column].mean()
        assert 1.15 <= ratio <= 1.25
    assert churn_rate(frame) > churn_rate(base.frame) + 0.02
    pd.testing.assert_series_equal(frame["tenure_months"], base.frame["tenure_months"])


def test_network_outage_hits_one_region_only(
    base: GeneratedData, drifted: dict[str, GeneratedData]
) -> None:
    frame = drifted["network_outage"].frame
    hit = frame["region"] == OUTAGE_REGION
    for column in ("dropped_calls", "support_calls"):
        assert frame.loc[hit, column].mean() > 2 * base.frame.loc[hit, column].mean()
        pd.testing.assert_series_equal(frame.loc[~hit, column], base.frame.loc[~hit, column])
    assert churn_rate(frame[hit]) > churn_rate(base.frame[hit]) + 0.1
    pd.testing.assert_series_equal(frame.loc[~hit, "churn"], base.frame.loc[~hit, "churn"])


def _fit_logistic(data: GeneratedData) -> Pipeline:
    numeric = [data.schema.features[i].name for i in data.schema.numeric_indices()]
    categorical = [data.schema.features[i].name for i in data.schema.categorical_indices()]
    encode = ColumnTransformer(
        [
            ("numeric", make_pipeline(SimpleImputer(), StandardScaler()), numeric),
            ("categorical", OneHotEncoder(handle_unknown="ignore"), categorical),
        ]
    )
    model = make_pipeline(encode, LogisticRegression(max_iter=500))
    model.fit(data.frame[list(data.schema.names)], data.frame["churn"] == "Yes")
    return model


def _auroc(model: Pipeline, data: GeneratedData) -> float:
    scores = model.predict_proba(data.frame[list(data.schema.names)])[:, 1]
    return float(roc_auc_score(data.frame["churn"] == "Yes", scores))


def test_competitor_offer_changes_the_relation_not_the_inputs(
    base: GeneratedData, drifted: dict[str, GeneratedData]
) -> None:
    frame = drifted["competitor_offer"].frame
    inputs = list(base.schema.names)
    for name in base.schema.names:
        if pd.api.types.is_numeric_dtype(base.frame[name]):
            assert frame[name].mean() == pytest.approx(base.frame[name].mean(), rel=0.02)
        else:
            shares = frame[name].value_counts(normalize=True)
            reference = base.frame[name].value_counts(normalize=True)
            pd.testing.assert_series_equal(shares, reference, atol=0.02)
    pd.testing.assert_frame_equal(frame[inputs], base.frame[inputs])
    fiber_loyal = (frame["internet_service"] == "fiber") & (frame["tenure_months"] >= 36)
    assert churn_rate(frame[fiber_loyal]) > churn_rate(base.frame[fiber_loyal]) + 0.3

    model = _fit_logistic(generate(ROWS, seed=12))
    assert _auroc(model, drifted["competitor_offer"]) < _auroc(model, base) - 0.03


def test_new_segment_brings_an_unseen_device_type(
    base: GeneratedData, drifted: dict[str, GeneratedData]
) -> None:
    data = drifted["new_segment"]
    vocabulary = data.schema.feature("device_type")
    assert isinstance(vocabulary, CategoricalFeature)
    assert NEW_DEVICE_TYPE not in vocabulary.vocabulary
    unseen = ~data.frame["device_type"].isin(vocabulary.vocabulary)
    assert unseen.mean() >= 0.05
    assert set(data.frame.loc[unseen, "device_type"]) == {NEW_DEVICE_TYPE}
    assert churn_rate(data.frame) > churn_rate(base.frame)


def test_drift_strength_scales_the_change() -> None:
    def monthly_mean(strength: float) -> float:
        frame = generate(1000, seed=3, scenario="price_increase", drift_strength=strength).frame
        return float(frame["monthly_charges"].mean())

    assert monthly_mean(0.0) < monthly_mean(0.5) < monthly_mean(1.0) < monthly_mean(2.0)


def test_unknown_scenario_lists_the_valid_ones() -> None:
    with pytest.raises(InputError, match="unknown scenario 'flood'") as caught:
        generate(10, scenario="flood")
    for name in SCENARIOS:
        assert name in str(caught.value)


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        ({"rows": 0}, "rows must be"),
        ({"rows": 10, "drift_strength": -0.5}, "drift strength"),
        ({"rows": 10, "drift_strength": float("nan")}, "drift strength"),
        ({"rows": 10, "seed": -1}, "seed must be"),
    ],
)
def test_bad_arguments_are_input_errors(arguments: dict[str, float], fragment: str) -> None:
    with pytest.raises(InputError, match=fragment):
        generate(**arguments)  # type: ignore[arg-type]


def test_generated_data_loads_with_its_own_schema(base: GeneratedData) -> None:
    table = load_training_table(base.frame, "churn", schema=base.schema)
    assert list(table.features.columns) == list(base.schema.names)
    assert int(table.labels.sum()) == int((base.frame["churn"] == "Yes").sum())


# ------------------------------------------------------------------------ CLI


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="edgefleet")
    cmd_data.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    result: int = args.handler(args)
    return result


def test_cli_generate_writes_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "nested" / "churn.parquet"
    argv = ["data", "generate", "--rows", "200", "--seed", "4", "--scenario", "new_segment"]
    assert _run([*argv, "--out", str(out)]) == 0
    expected = generate(200, seed=4, scenario="new_segment").frame
    pd.testing.assert_frame_equal(read_table(out), expected, check_dtype=False)
    message = capsys.readouterr().err
    for fragment in ("200 rows", "churn rate", str(out)):
        assert fragment in message


def test_cli_lists_scenarios(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["data", "scenarios"]) == 0
    listing = capsys.readouterr().out
    for name, description in SCENARIOS.items():
        assert f"{name}  " in listing
        assert description in listing


def test_cli_refuses_an_unknown_suffix_before_generating(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"\.csv, \.parquet"):
        _run(["data", "generate", "--rows", "10", "--out", str(tmp_path / "churn.xlsx")])
