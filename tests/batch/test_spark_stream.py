"""``edgefleet stream spark``: Spark Structured Streaming (real Spark, local[2]) from a
folder of new JSON files into the prediction table, by batch scoring's ``score_dataframe``;
a restart on the same checkpoint takes only the new files, and a key seen again is
updated, not doubled."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from edgefleet.central.stream.sink import StreamTable
from edgefleet.central.stream.spark_stream import SparkStream, start
from edgefleet.cli.main import main
from edgefleet.edge.scorer import Scorer


def _records(bundle: Path) -> list[dict[str, Any]]:
    manifest = json.loads((bundle / "manifest.json").read_text())
    return [g["record"] for g in manifest["golden"]]


def _drop(folder: Path, name: str, rows: list[dict[str, Any]]) -> None:
    # Written aside, then renamed in: a file source must never see a half-written file.
    staging = folder.parent / f".{name}"
    staging.write_text("".join(json.dumps(r) + "\n" for r in rows))
    staging.rename(folder / name)


def test_spark_stream_upserts_each_new_file_once(
    spark: Any, batch_bundle: Path, keypair: tuple[Path, Path], tmp_path: Path
) -> None:
    bundle, key = batch_bundle, keypair[1]
    records = _records(bundle)
    source = tmp_path / "incoming"
    source.mkdir()
    stream = SparkStream(
        source,
        "json",
        bundle,
        key,
        "customer_id",
        f"sqlite:///{tmp_path / 'ops.db'}",
        "scores",
        tmp_path / "checkpoint",
    )
    first = [{**records[i % len(records)], "customer_id": f"C-{i}"} for i in range(30)]
    bad = {**records[0], "customer_id": "C-bad", "tenure_months": -1000}
    _drop(source, "part-1.json", [*first[:20], bad])
    _drop(source, "part-2.json", first[20:])
    start(spark, stream, once=True).awaitTermination(600)
    table = StreamTable(stream.db, "scores")
    assert table.count() == 30
    assert table.rejected_count() == 1

    # New data: ten keys seen before (now with the records shifted by one) and ten new.
    second = [{**records[(i + 1) % len(records)], "customer_id": f"C-{i}"} for i in range(20, 40)]
    _drop(source, "part-3.json", second)
    command = [
        "stream",
        "spark",
        str(bundle),
        "--trust-key",
        str(key),
        "--source",
        str(source),
        "--db",
        stream.db,
        "--table",
        "scores",
        "--key",
        "customer_id",
        "--checkpoint",
        str(stream.checkpoint),
        "--once",
        "--master",
        "local[2]",
    ]
    assert main(command) == 0  # the command, on the same checkpoint
    assert table.count() == 40
    scorer = Scorer.from_bundle(bundle, key)
    with table.engine.connect() as connection:
        rows = {r.key: r for r in connection.execute(select(table.store.table)).all()}
    for record in [*first[:20], *second]:
        expected = float(scorer.positive([record])[0])
        assert rows[record["customer_id"]].score == pytest.approx(expected, abs=1e-6)
    assert table.rejected_count() == 1  # the first file was not taken again
    table.close()
