"""Reconcilers, one per kind: observe what exists, ask the kind's pure planner what to do, do it,
and write status once (``trainingrun`` + ``trainingrun_plan``, ``voicemodel`` + ``voicemodel_plan``)."""
