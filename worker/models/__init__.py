"""Model definitions (one decoder for Qwen3, Qwen2 and Llama), their configs and weight loading."""
