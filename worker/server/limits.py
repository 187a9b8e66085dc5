"""What one worker lets its clients use: the server's limits, declared once (the CLI's defaults too)."""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_CHOICES = 256  # prompts × n in one call
PROMPT_CHARS_PER_TOKEN = (
    16  # a text prompt longer than this × max_model_len characters is refused untokenized
)
RETRY_AFTER_S = 1  # what a 503 for a full queue or a draining server asks clients to wait


@dataclass(frozen=True)
class HealthLimits:
    """When /health turns 503: after ``max_failed_steps`` failed engine steps in a row, or when work
    is pending and no engine loop iteration ended for ``stall_timeout_s`` seconds."""

    max_failed_steps: int = 3
    stall_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if self.max_failed_steps < 1:
            raise ValueError(f"health max failed steps must be at least 1, got {self.max_failed_steps}")
        if not self.stall_timeout_s > 0:
            raise ValueError(f"health stall timeout must be positive, got {self.stall_timeout_s}")


@dataclass(frozen=True)
class ServerLimits:
    """Admission limits: requests waiting for the engine, and the size of a request body."""

    max_queued_requests: int = 1024
    max_request_bytes: int = 16 * 2**20
    health: HealthLimits = field(default_factory=HealthLimits)

    def __post_init__(self) -> None:
        if self.max_queued_requests < 1:
            raise ValueError(f"max queued requests must be at least 1, got {self.max_queued_requests}")
        if self.max_request_bytes < 1024:
            raise ValueError(f"max request bytes must be at least 1024, got {self.max_request_bytes}")
