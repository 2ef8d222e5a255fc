"""The MQTT ingestor: verify, batch and seal readings; its process entry point."""
