"""Talking to the MQTT broker: one client factory and URL parser, device logins."""
