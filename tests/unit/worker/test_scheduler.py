"""Scheduler policy, without a model: token budget, decode-first order, chunking, preemption, limits."""

from __future__ import annotations

from mili.worker.config import EngineConfig
from mili.worker.engine.block_manager import BlockManager
from mili.worker.engine.scheduler import ScheduledBatch, Scheduler
from mili.worker.engine.sequence import Sequence, SequenceStatus
from mili.worker.sampling_params import SamplingParams


def make_scheduler(num_blocks: int = 64, block_size: int = 4, **config) -> Scheduler:
    # The scheduler reads block sizes only through its block manager: small blocks keep the cases short.
    return Scheduler(EngineConfig(**config), BlockManager(num_blocks, block_size))


def add(scheduler: Scheduler, name: str, prompt_len: int, tokens: list[int] | None = None) -> Sequence:
    """Queue a sequence; its prompt is distinct per name unless ``tokens`` are given."""
    first = 1000 * sum(map(ord, name))
    seq = Sequence(name, 0, tokens or list(range(first, first + prompt_len)), SamplingParams())
    scheduler.add(seq)
    return seq


def finish_step(scheduler: Scheduler, batch: ScheduledBatch, token: int = 7) -> None:
    """What the engine does after the forward pass: account tokens, append sampled ones."""
    sampled = [entry.seq for entry in batch.entries if entry.samples]
    scheduler.postprocess(batch)
    for seq in sampled:
        seq.token_ids.append(token)


def test_decodes_go_first_and_long_prompts_are_chunked_under_the_budget():
    scheduler = make_scheduler(max_num_batched_tokens=10)
    short = add(scheduler, "short", 3)
    long = add(scheduler, "long", 25)
    first = scheduler.schedule()
    assert [(e.seq.request_id, e.num_tokens) for e in first.prefills] == [("short", 3), ("long", 7)]
    assert first.prefills[0].samples and not first.prefills[1].samples
    finish_step(scheduler, first)
    second = scheduler.schedule()
    assert [e.seq for e in second.decodes] == [short]
    assert [(e.seq, e.num_tokens) for e in second.prefills] == [(long, 9)]  # budget 10 - 1 decode
    assert second.num_tokens == 10
    finish_step(scheduler, second)
    third = scheduler.schedule()
    assert [(e.seq, e.num_tokens) for e in third.prefills] == [(long, 9)]
    assert third.prefills[0].samples  # the last chunk reaches the end of the prompt


def test_when_blocks_run_out_the_newest_sequence_is_preempted_and_requeued_first():
    scheduler = make_scheduler(num_blocks=4, block_size=4)
    old = add(scheduler, "old", 8)
    new = add(scheduler, "new", 8)
    waiting = add(scheduler, "waiting", 2)
    batch = scheduler.schedule()
    assert [e.seq for e in batch.prefills] == [old, new]  # 2 blocks each: the pool is full
    finish_step(scheduler, batch)
    batch = scheduler.schedule()  # both need a ninth token slot: a new block each, none is free
    assert [e.seq for e in batch.decodes] == [old]
    assert new.status is SequenceStatus.WAITING and new.block_table == [] and new.num_computed_tokens == 0
    assert list(scheduler.waiting) == [new, waiting] and scheduler.num_preemptions == 1
    assert not batch.prefills  # a step that had to preempt admits nothing new


def test_max_num_seqs_bounds_the_running_set():
    scheduler = make_scheduler(max_num_seqs=2)
    for name in "abc":
        add(scheduler, name, 3)
    batch = scheduler.schedule()
    assert [e.seq.request_id for e in batch.prefills] == ["a", "b"]
    assert [s.request_id for s in scheduler.waiting] == ["c"]


def test_finish_releases_a_sequence_wherever_it_is():
    scheduler = make_scheduler()
    running = add(scheduler, "running", 5)
    finish_step(scheduler, scheduler.schedule())
    queued = add(scheduler, "queued", 5)
    for seq in (running, queued):
        scheduler.finish(seq)
        assert seq.status is SequenceStatus.FINISHED and seq.block_table == []
    assert not scheduler.has_work()
    assert all(count == 0 for count in scheduler.block_manager.ref_counts)


def test_a_prefix_being_computed_is_shared_next_step_not_computed_twice():
    scheduler = make_scheduler(max_num_batched_tokens=64)
    system_prompt = list(range(1, 21))  # 5 full blocks of 4
    first = add(scheduler, "first", 0, [*system_prompt, 100, 101])
    second = add(scheduler, "second", 0, [*system_prompt, 200, 201])
    other = add(scheduler, "other", 6)
    batch = scheduler.schedule()
    assert [e.seq for e in batch.prefills] == [first, other]  # second waits, keeping its place
    assert list(scheduler.waiting) == [second]
    finish_step(scheduler, batch)
    batch = scheduler.schedule()
    assert [(e.seq, e.num_tokens) for e in batch.prefills] == [(second, 2)]  # 20 tokens shared
    assert second.num_cached_tokens == 20
    assert scheduler.block_manager.stats.hit_tokens == 20
