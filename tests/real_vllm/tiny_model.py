"""Build a tiny random-weight Llama that real vLLM for CPUs serves, with no download.

Run with the python of .venv-vllm (it needs torch, transformers and tokenizers, which the dev venv lacks):

    .venv-vllm/bin/python tests/real_vllm/tiny_model.py OUT_DIR

Writes a `LlamaForCausalLM` (hidden 128, 2 layers, 4 heads of head_dim 32, 2 KV heads, vocab 512; vLLM's
CPU attention wants head_dim >= 32) with seeded random weights, and a byte-level BPE tokenizer trained on a
few hundred made-up words, wrapped as a `PreTrainedTokenizerFast` with a ChatML chat template, all in
OUT_DIR (about 1.7 MB). The same inputs give the same files. OUT_DIR appears whole or not at all: the model
is built beside it and renamed into place. `vllm serve OUT_DIR --max-model-len 256` needs no other flag.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

VOCAB = 512
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def corpus() -> list[str]:
    """A few hundred made-up words and sentences: enough for BPE to learn merges up to VOCAB tokens."""
    onsets = ["b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "st", "tr"]
    vowels = ["a", "e", "i", "o", "u", "ai", "ou"]
    codas = ["", "n", "r", "s", "t", "l", "nd", "ng"]
    words = [o + v + c for o in onsets for v in vowels for c in codas]
    words += ["hello", "world", "model", "server", "engine", "token", "health", "restart", "the", "a", "is"]
    sentences = [" ".join(words[i : i + 8]) for i in range(0, len(words), 8)]
    return words + sentences + ["Hello, world! How are you? 0123456789"]


def build(out: Path) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    staging = out.with_name(out.name + ".building")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.model_max_length = 256
    tokenizer.save_pretrained(staging)

    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    bos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=256,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=bos,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=bos, eos_token_id=eos, pad_token_id=bos)
    model.save_pretrained(staging)

    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} OUT_DIR", file=sys.stderr)
        return 2
    print(build(Path(argv[1]).resolve()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
