"""fake-vllm: an imitation of `vllm serve` that looks like vLLM from outside and fails on command."""
