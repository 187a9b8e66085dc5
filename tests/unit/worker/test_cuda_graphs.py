"""Decode CUDA graphs, the parts that do not need a GPU: buckets, when graphs are off, and the padded
static-buffer path itself, replayed eagerly on CPU through the whole engine."""

from __future__ import annotations

import pytest
import torch

from mili.kernels import BackendChoice, TorchBackend
from mili.kernels.checked_backend import CheckedTorchBackend
from mili.worker import LLM, SamplingParams
from mili.worker.config import EngineConfig
from mili.worker.engine.cuda_graphs import DecodeGraphs, bucket_for, capture_sizes, graphs_off_reason


def test_buckets_cover_every_batch_size_up_to_max_num_seqs() -> None:
    assert capture_sizes(256)[:6] == [1, 2, 4, 8, 16, 32] and capture_sizes(256)[-1] == 256
    assert capture_sizes(40) == [1, 2, 4, 8, 16, 32, 40]
    assert capture_sizes(1) == [1]
    sizes = capture_sizes(100)
    for n in range(1, 101):
        size = bucket_for(n, sizes)
        assert size is not None and n <= size < 2 * n + 16
    assert bucket_for(101, sizes) is None


def test_graphs_are_off_when_eager_is_enforced_off_gpu_or_with_host_reading_kernels() -> None:
    cuda = torch.device("cuda")
    cuda_backend = type("FakeCuda", (), {"name": "cuda"})()
    assert graphs_off_reason(EngineConfig(), cuda, cuda_backend) is None
    assert "enforce_eager" in graphs_off_reason(EngineConfig(enforce_eager=True), cuda, cuda_backend)
    assert "cpu" in graphs_off_reason(EngineConfig(), torch.device("cpu"), cuda_backend)
    assert "torch kernels" in graphs_off_reason(EngineConfig(), cuda, TorchBackend())


class _EagerReplay:
    def __init__(self, graphs: DecodeGraphs, size: int) -> None:
        self.graphs, self.size = graphs, size

    def replay(self) -> None:
        self.graphs.replayed.append(self.size)
        self.graphs.hidden[: self.size] = self.graphs._forward(self.size)


class EagerReplayGraphs(DecodeGraphs):
    """Everything a captured graph does except the capture: a replay runs the bucket's forward on the
    static buffers, padding rows included."""

    def capture(self, sizes: list[int] | None = None) -> None:
        self.replayed: list[int] = []
        for size in sizes or self.sizes:
            self.graphs[size] = _EagerReplay(self, size)


def greedy(model_dir, monkeypatch, graphs: bool) -> tuple[list[list[int]], LLM]:
    backend = CheckedTorchBackend("cpu")
    monkeypatch.setattr(
        "mili.worker.engine.model_runner.choose_backend", lambda *a, **k: BackendChoice(backend, "requested")
    )
    if graphs:
        monkeypatch.setattr("mili.worker.engine.model_runner.graphs_off_reason", lambda *a: None)
        monkeypatch.setattr("mili.worker.engine.model_runner.DecodeGraphs", EagerReplayGraphs)
    llm = LLM(model=str(model_dir), device="cpu", dtype="bfloat16", max_num_seqs=6, max_model_len=256)
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 400, (n,), generator=generator).tolist() for n in (1, 9, 40, 3, 17)]
    outputs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True))
    return [o.outputs[0].token_ids for o in outputs], llm


@pytest.fixture(scope="module")
def qwen3_d64(tmp_path_factory):
    from mili_testing.tiny_models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("graphs") / "qwen3", "Qwen3ForCausalLM", head_dim=64)


def test_padded_static_buffer_decode_equals_eager(qwen3_d64, monkeypatch) -> None:
    eager, _ = greedy(qwen3_d64, monkeypatch, graphs=False)
    padded, llm = greedy(qwen3_d64, monkeypatch, graphs=True)
    runner = llm.engine.runner
    assert runner.graphs is not None and runner.graphs.sizes == [1, 2, 4, 6]
    assert runner.graphs.max_blocks_per_seq == 256 // 16
    # The start-up self-check replays 3 rows in the 4-bucket; decode steps of 5, 4, ... sequences follow.
    assert runner.graphs.replayed[0] == 4 and 6 in runner.graphs.replayed
    assert len(runner.graphs.replayed) >= 9
    assert padded == eager


class _OffByHalf(_EagerReplay):
    def replay(self) -> None:
        super().replay()
        self.graphs.hidden.add_(0.5)


class WrongReplayGraphs(EagerReplayGraphs):
    def capture(self, sizes: list[int] | None = None) -> None:
        self.replayed = []
        for size in sizes or self.sizes:
            self.graphs[size] = _OffByHalf(self, size)


def wrong_graph_engine(model_dir, monkeypatch, kernels: str) -> LLM:
    backend = CheckedTorchBackend("cpu")
    monkeypatch.setattr(
        "mili.worker.engine.model_runner.choose_backend", lambda *a, **k: BackendChoice(backend, "requested")
    )
    monkeypatch.setattr("mili.worker.engine.model_runner.graphs_off_reason", lambda *a: None)
    monkeypatch.setattr("mili.worker.engine.model_runner.DecodeGraphs", WrongReplayGraphs)
    return LLM(model=str(model_dir), device="cpu", dtype="bfloat16", max_num_seqs=4, kernels=kernels)


def test_graphs_that_disagree_with_eager_are_dropped_under_auto_and_refused_under_cuda(
    qwen3_d64, monkeypatch, caplog
) -> None:
    with caplog.at_level("ERROR", logger="mili.worker.engine.model_runner"):
        llm = wrong_graph_engine(qwen3_d64, monkeypatch, "auto")
    assert llm.engine.runner.graphs is None
    assert any("cuda_graphs" in r.getMessage() for r in caplog.records if r.levelname == "ERROR")
    with pytest.raises(RuntimeError, match="CUDA graphs failed their self-check: cuda_graphs"):
        wrong_graph_engine(qwen3_d64, monkeypatch, "cuda")
