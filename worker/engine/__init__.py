"""The engine core: sequences, block bookkeeping, radix prefix cache, scheduler, sampler, model runner."""
