"""MILI operator: MiliDeployment -> worker Deployment + Service, with status, validation and Events (Kopf)."""
