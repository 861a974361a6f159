"""kopf handlers: thin glue between watch events and the reconcile functions."""
