"""FHIR Subscriptions intake (issue 6): notification shapes, durable acknowledgement, recovery.

- :mod:`.status` reads the status of a topic-based notification (R4 Backport ``Parameters``,
  R4B/R5 ``SubscriptionStatus``) — pure;
- :mod:`.state` owns the ``subscription_state`` and ``inbox`` tables;
- :mod:`.intake` books a notification in the caller's transaction (before the 2xx);
- :mod:`.recovery` fetches id-only / empty / ping / gap work from the source, reconciles each
  source periodically and watches heartbeats (a background task);
- :mod:`.manage` creates or repairs Pinpoint's Subscriptions on a source and reports on them.
"""
