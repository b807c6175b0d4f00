"""Cold-chain telemetry: MQTT ingest, payload contract, storage, queries."""
