"""BentoML services: one thin class per model or pipeline, wired from the profile.

The entry service is ``services.gateway:Gateway``; the others are its dependencies and each runs
in its own processes with its own workers, batching and resources.
"""
