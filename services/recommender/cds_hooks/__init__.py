"""CDS Hooks 2.0 service (CONTRACT §2 "Recommender", STANDARDS §1).

Modules: ``discovery`` (the three services and their prefetch templates), ``models`` (request
validation per hook), ``auth`` (JWT checks on every call when issuers are trusted), ``data``
(prefetch, fallback fetch from an allow-listed ``fhirServer``, stored facts), ``assess`` (the one
seam to the criteria engine), ``cards`` (cards from the assessment document), ``feedback``,
``service`` (one call end to end) and ``api`` (thin routes).
"""
