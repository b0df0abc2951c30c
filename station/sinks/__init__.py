"""Store-and-forward telemetry: sinks that read the local store by durable cursor.

- :class:`MqttSink` — live telemetry, status (Last Will), events/alerts, run summaries;
- :class:`InfluxSink` — history as line protocol over the InfluxDB v2 write API;
- :func:`run_sinks` / :class:`SinkRunner` — what the daemon starts; ``SinkRunner.health()``
  reports lag;
- :func:`publish_event` — persist a job event or alert; the MQTT sink publishes it.

See ``docs/mqtt.md`` for topics and payloads.
"""

from station.mqttclient import AckClient, PublishRejected
from station.sinks.cursor import Sink, SinkDB, ensure_sink_schema, publish_event
from station.sinks.influx import InfluxSink
from station.sinks.mqtt import MqttSink
from station.sinks.runner import SinkRunner, run_sinks

__all__ = [
    "AckClient",
    "InfluxSink",
    "MqttSink",
    "PublishRejected",
    "Sink",
    "SinkDB",
    "SinkRunner",
    "ensure_sink_schema",
    "publish_event",
    "run_sinks",
]
