"""capserve on Ray Serve: the app of ``capserve serve`` as a deployment of replicas (docs/ray.md)."""
