"""The edge agent: follows a fleet's rollout over MQTT, installs verified models, scores
locally, and reports aggregates."""
