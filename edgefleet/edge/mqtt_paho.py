"""A paho-mqtt client configured from a :class:`BrokerAddress`: MQTT 5, credentials, TLS and
the will. Everything here must happen before ``connect``: paho refuses it later."""

from __future__ import annotations

import ssl

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.edge.broker_address import BrokerAddress
from edgefleet.edge.mqtt_messages import Will
from edgefleet.errors import InputError


def paho_client(
    address: BrokerAddress,
    client_id: str,
    *,
    manual_ack: bool,
    max_inflight: int,
    reconnect_delay: tuple[int, int],
    will: Will | None,
) -> paho.Client:
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=paho.MQTTv5,
        manual_ack=manual_ack,
    )
    client.max_inflight_messages_set(max_inflight)
    client.reconnect_delay_set(*reconnect_delay)
    if address.username is not None:
        client.username_pw_set(address.username, address.password)
    if address.tls:
        _use_tls(client, address)
    if will is not None:
        client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
    return client


def _use_tls(client: paho.Client, address: BrokerAddress) -> None:
    try:
        client.tls_set(
            ca_certs=str(address.ca_file) if address.ca_file else None,
            certfile=str(address.cert_file) if address.cert_file else None,
            keyfile=str(address.key_file) if address.key_file else None,
            cert_reqs=ssl.CERT_REQUIRED,
        )
    except (OSError, ssl.SSLError, ValueError) as error:
        raise InputError(f"cannot use the TLS files for {address.url}: {error}") from None
    # --insecure skips only the host name check; the chain is still verified.
    client.tls_insecure_set(address.insecure)
