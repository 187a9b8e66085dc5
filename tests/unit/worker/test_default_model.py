"""The default model, served through the public offline API, answers a factual question correctly."""

from __future__ import annotations

from mili.worker import LLM, SamplingParams


def test_default_model_knows_the_capital_of_france(smollm2_dir):
    llm = LLM(model=str(smollm2_dir), kernels="torch")
    (output,) = llm.chat(
        [{"role": "user", "content": "What is the capital of France?"}],
        SamplingParams(temperature=0.0, max_tokens=32),
    )
    completion = output.outputs[0]
    assert "Paris" in completion.text
    assert completion.finish_reason == "stop"  # ends on the model's own end-of-turn token
