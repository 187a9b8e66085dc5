"""The MILI gateway: a small asyncio proxy in each router pod, in front of vllm-router.

It forwards every request to the router unchanged (streaming passthrough, end-to-end headers such as
``Authorization``), and while the router has no ready worker (a MiliDeployment at zero replicas) it holds
OpenAI API requests, a bounded number for up to ``coldStartTimeoutSeconds``, instead of letting the router
answer 503 at once. See docs/routing.md "Scale from zero".
"""
