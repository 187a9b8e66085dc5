"""The local-mode cluster (emulator, operator, pod runner, Prometheus) and the kind-mode client."""
