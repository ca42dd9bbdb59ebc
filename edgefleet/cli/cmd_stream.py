"""``edgefleet stream score``: online scoring of an MQTT stream into the operational database."""

from __future__ import annotations

import argparse
import signal
import socket
import threading
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from edgefleet.cli.cmd_broker import identity_from_args
from edgefleet.cli.progress import say

EPILOG = """\
examples:
  edgefleet stream score bundle/ --trust-key edgefleet.pub \\
      --source mqtt://127.0.0.1:1883/crm/customers --db sqlite:///crm.db \\
      --table churn_scores --key customer_id
  edgefleet stream score --identity scoring-2/ --state-dir stream-state/ \\
      --source mqtts://broker:8883/crm/customers --db postgresql://crm@db/crm \\
      --table churn_scores --key customer_id --consumer b      # a second consumer

  mosquitto_pub -t crm/customers -q 1 -m '{"customer_id": "C-1", "tenure_months": 3, ...}'

Each event is a JSON record (with the key column) or an array of records. Events are
scored in micro-batches (--batch-size, --batch-wait) and their rows upserted into TABLE by
KEY in one transaction; only then are they acknowledged to the broker. A consumer killed
at any moment gets its unacknowledged events again when it comes back (same --consumer),
and upserting them again changes nothing: no event lost, no row doubled. Consumers of one
--group split the topic (an MQTT 5 shared subscription): add consumers to scale, each with
its own --consumer name. Events that can never be scored go to TABLE_rejected with the
reason. The topic may hold MQTT wildcards (write # as %23 in the URL).

With --identity or --fleet the consumer is a fleet member: it scores with the model the
fleet's rollout names and reports what it scored, like a device.
"""


def register(subparsers: Any) -> None:
    stream = subparsers.add_parser(
        "stream",
        help="score a stream of events into the operational database",
        description="Online scoring: consume events, score them, upsert the predictions.",
    )
    commands = stream.add_subparsers(dest="stream_command", metavar="COMMAND")
    score = commands.add_parser(
        "score",
        help="consume MQTT events, score them, upsert predictions by key (at-least-once)",
        description="A long-running consumer: events from an MQTT topic, scored in "
        "micro-batches, upserted into a SQLite or PostgreSQL table by key; acknowledged "
        "only once committed.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    score.add_argument("bundle", nargs="?", type=Path, metavar="BUNDLE", help="bundle folder")
    score.add_argument("--source", required=True, metavar="mqtt://HOST[:PORT]/TOPIC")
    score.add_argument(
        "--db", required=True, metavar="URL", help="sqlite:///FILE or postgresql://..."
    )
    score.add_argument(
        "--table", required=True, help="the table of predictions (created if missing)"
    )
    score.add_argument("--key", required=True, metavar="COLUMN", help="the records' key field")
    score.add_argument("--trust-key", type=Path, action="append", help="publisher key to trust")
    score.add_argument("--format", help="artifact format to run")
    score.add_argument("--group", default="edgefleet-stream", help="shared-subscription group")
    score.add_argument(
        "--consumer",
        default=socket.gethostname(),
        help="this consumer's stable name in the group (default: host name)",
    )
    score.add_argument("--batch-size", type=int, default=500, help="events per micro-batch")
    score.add_argument(
        "--batch-wait",
        type=float,
        default=20.0,
        metavar="MS",
        help="wait this long for more events after a batch's first (default 20)",
    )
    score.add_argument("--fleet", help="score as a member of this fleet (the identity's)")
    score.add_argument("--device-id", help="this member's id in the fleet")
    score.add_argument("--state-dir", type=Path, help="a fleet member's models and outbox")
    score.add_argument("--identity", type=Path, metavar="DIR", help="identity folder")
    score.add_argument("--ca-file", type=Path, help="CA certificate(s) of an mqtts broker")
    score.add_argument("--cert-file", type=Path, help="client certificate for mqtts")
    score.add_argument("--key-file", type=Path, help="private key of the client certificate")
    score.add_argument("--insecure", action="store_true", help="skip the broker host name check")
    score.set_defaults(handler=run_stream_score, broker=None)
    spark = commands.add_parser(
        "spark",
        help="the same with Spark Structured Streaming: new files in a folder, upserted by key",
        description="Spark Structured Streaming: every new file (JSON lines or CSV) in a "
        "folder scored with batch scoring's Spark path (mapInArrow) and upserted into the "
        "prediction table in foreachBatch; Spark's checkpoint and the idempotent upsert make a "
        "restarted query neither lose nor double a row.",
        epilog=SPARK_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    spark.add_argument("bundle", type=Path, metavar="BUNDLE", help="bundle folder")
    spark.add_argument(
        "--source",
        type=Path,
        required=True,
        metavar="DIR",
        help="the folder new files land in (move them in whole)",
    )
    spark.add_argument("--input-format", choices=("json", "csv"), default="json")
    spark.add_argument("--db", required=True, metavar="URL")
    spark.add_argument("--table", required=True)
    spark.add_argument("--key", required=True, metavar="COLUMN")
    spark.add_argument(
        "--checkpoint",
        type=Path,
        required=True,
        metavar="DIR",
        help="Spark's checkpoint: which files are done (keep it with the table)",
    )
    spark.add_argument("--trust-key", type=Path, required=True, help="publisher key to trust")
    spark.add_argument("--format", help="artifact format to run")
    spark.add_argument("--master", default="local[*]", help="Spark master (default local[*])")
    spark.add_argument(
        "--once",
        action="store_true",
        help="score what is in the folder now, then stop (availableNow)",
    )
    spark.add_argument(
        "--trigger",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="look for new files this often (default 5)",
    )
    spark.set_defaults(handler=run_stream_spark)
    stream.set_defaults(handler=lambda args: stream.print_help() or 2)


def parse_source(url: str) -> tuple[str, str]:
    """``mqtt://host:port/a/b`` -> (``mqtt://host:port``, ``a/b``)."""
    from edgefleet.errors import InputError

    scheme, _, rest = url.partition("://")
    server, _, topic = rest.partition("/")
    topic = unquote(topic)
    if scheme not in ("mqtt", "mqtts") or not server or not topic:
        raise InputError(f"--source must be mqtt://HOST[:PORT]/TOPIC (or mqtts://), not {url!r}")
    return f"{scheme}://{server}", topic


def run_stream_score(args: argparse.Namespace) -> int:
    from edgefleet.central.stream.consumer import StreamConsumer, StreamSettings
    from edgefleet.central.stream.sink import StreamTable
    from edgefleet.edge.mqtt import BrokerAddress, MqttClient
    from edgefleet.errors import InputError

    server, topic = parse_source(args.source)
    identity = identity_from_args(args)
    in_fleet = identity is not None or args.fleet is not None
    if in_fleet == (args.bundle is not None):
        raise InputError("give a BUNDLE, or join a fleet with --identity DIR (not both)")
    address = (
        identity.address(server, insecure=args.insecure)
        if identity is not None
        else BrokerAddress.parse(
            server,
            ca_file=args.ca_file,
            cert_file=args.cert_file,
            key_file=args.key_file,
            insecure=args.insecure,
        )
    )
    settings = StreamSettings(
        key=args.key, batch_size=args.batch_size, batch_wait=args.batch_wait / 1000
    )
    table = StreamTable(args.db, args.table)
    scoring, agent = _scoring(args, identity, address)
    client = MqttClient(
        address, f"edgefleet-stream-{args.group}-{args.consumer}", manual_ack=True, max_inflight=100
    )
    consumer = StreamConsumer(client, f"$share/{args.group}/{topic}", scoring, table, settings)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    if agent is not None:
        agent.start()
    consumer.start()  # before connecting: a resumed session delivers at once
    client.connect(timeout=30)
    say(
        f"consuming {topic} on {address.display} into {args.table} (group {args.group}, "
        f"consumer {args.consumer}); Ctrl-C stops"
    )
    last = -1
    while not stop.wait(5.0):
        counts = consumer.counts
        if counts.events != last:
            say(
                f"  {counts.events} events, {counts.rows} rows upserted, {counts.rejected} rejected"
            )
            last = counts.events
    consumer.stop()
    client.disconnect()
    if agent is not None:
        agent.stop()
    table.close()
    return 0


def _scoring(args: argparse.Namespace, identity: Any, address: Any) -> tuple[Any, Any]:
    from edgefleet.central.stream.consumer import AgentScoring, BundleScoring
    from edgefleet.edge.scorer import Scorer, trusted_keys_from
    from edgefleet.errors import InputError

    keys = args.trust_key or ([identity.signing_key] if identity is not None else [])
    if not keys:
        raise InputError("give --trust-key FILE (the publisher's public key) or --identity DIR")
    if args.bundle is not None:
        return BundleScoring(Scorer.from_bundle(args.bundle, keys, format=args.format)), None
    from edgefleet.edge.agent.agent import Agent, AgentConfig

    if args.state_dir is None:
        raise InputError("a fleet member needs --state-dir DIR for its models and outbox")
    fleet = identity.fleet if identity is not None else args.fleet
    device_id = identity.device_id if identity is not None else args.device_id
    if device_id is None:
        raise InputError("give --device-id (or --identity DIR from 'edgefleet devices enroll')")
    agent = Agent(
        AgentConfig(
            fleet=fleet,
            device_id=device_id,
            state_dir=args.state_dir,
            trusted_keys=tuple(trusted_keys_from(keys)),
            broker=address,
            prefix=identity.prefix if identity is not None else "edgefleet",
            format=args.format,
        )
    )
    return AgentScoring(agent), agent


SPARK_EPILOG = """\
examples:
  edgefleet stream spark bundle/ --trust-key edgefleet.pub --source incoming/ \\
      --db postgresql://crm@db/crm --table churn_scores --key customer_id \\
      --checkpoint checkpoints/churn_scores --master local[2]
  mv /tmp/customers-0042.json incoming/      # picked up at the next trigger
"""


def run_stream_spark(args: argparse.Namespace) -> int:
    from edgefleet.central.batch.spark import spark_session
    from edgefleet.central.stream.spark_stream import SparkStream, start

    stream = SparkStream(
        args.source,
        args.input_format,
        args.bundle,
        args.trust_key,
        args.key,
        args.db,
        args.table,
        args.checkpoint,
        args.format,
    )
    session = spark_session(args.master, app="edgefleet-stream")
    query = start(session, stream, once=args.once, trigger_seconds=args.trigger)
    say(
        f"streaming new files of {args.source} into {args.table}"
        + (" (what is there now, then stop)" if args.once else "; Ctrl-C stops")
    )
    try:
        query.awaitTermination()
    except KeyboardInterrupt:
        query.stop()
    return 0
