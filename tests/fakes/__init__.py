"""Fakes of external systems, usable in tests and demos (see ``fhir_server``)."""
