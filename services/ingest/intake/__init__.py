"""Intake: credentials, bundle handling, identity and references, notifications, dead letters."""
