"""The controller runtime both kinds share: ``Controller(resource, reconcile)``, its work queue,
retries with backoff and paced resync, and the kopf wiring that turns watch events into keys."""
