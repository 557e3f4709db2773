"""The evidence page: ``GET /patients/{id}/evidence`` (CONTRACT §2), server-rendered HTML.

``links`` signs and checks the expiring links CDS cards carry; ``chart`` lays out the pain-score
timeline (pure geometry, unit-tested); ``checklist`` turns an assessment into criteria with policy
citations; ``page`` assembles the view model; ``api`` is the route.
"""
