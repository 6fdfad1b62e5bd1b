"""Tiny random models for tests: a 2-layer Llama and a 2-layer GPT-2 with a real (small)
byte-level BPE tokenizer, saved as a normal Hugging Face directory so tests go through the
real loading code. Nothing is downloaded."""
from __future__ import annotations

from pathlib import Path

import torch

CORPUS = [
    "The capital of France is Paris. The capital of Italy is Rome.",
    "def add(a, b):\n    return a + b\n",
    "Once upon a time a small robot learned to read the stars.",
    "Water boils at 100 degrees Celsius at sea level.",
    "Question: what is two plus two? Answer: four.",
] * 20

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def make_tokenizer(vocab_size: int = 384):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="</s>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def make_tiny_model(arch: str, path: str | Path, *, seed: int = 0, tie: bool | None = None) -> Path:
    """Build and save a tiny random model of `arch` ('llama', 'llama-bias', 'llama3', 'gpt2', 'qwen2', 'qwen3',
    'mistral', 'mixtral' or 'gemma2') at `path`."""
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, MixtralConfig

    path = Path(path)
    tokenizer = make_tokenizer()
    vocab = len(tokenizer)
    torch.manual_seed(seed)
    if arch == "llama":
        config = LlamaConfig(
            vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
            tie_word_embeddings=True if tie is None else tie, bos_token_id=1, eos_token_id=2, pad_token_id=2,
        )
    elif arch == "llama-bias":  # attention_bias and mlp_bias (as some Llama-architecture models have them)
        config = LlamaConfig(
            vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, attention_bias=True,
            mlp_bias=True, tie_word_embeddings=True if tie is None else tie, bos_token_id=1, eos_token_id=2,
            pad_token_id=2,
        )
    elif arch == "gpt2":
        config = GPT2Config(
            vocab_size=vocab, n_embd=64, n_layer=2, n_head=4, n_positions=1024,  # 1024: transformers reads GGUF gpt2 with that
            tie_word_embeddings=True if tie is None else tie, bos_token_id=1, eos_token_id=2,
        )
    elif arch == "llama3":  # Llama 3.1+ rope scaling (rope_type llama3, as Llama 3.2 1B has it)
        config = LlamaConfig(
            vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, max_position_embeddings=131072, tie_word_embeddings=True if tie is None else tie,
            bos_token_id=1, eos_token_id=2, pad_token_id=2,
            rope_parameters={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 8192, "rope_theta": 500000.0},
        )
    elif arch in ("qwen2", "qwen3", "mistral"):  # Llama-like blocks that GGUF stores under their own names
        from transformers import MistralConfig, Qwen2Config, Qwen3Config

        cls = {"qwen2": Qwen2Config, "qwen3": Qwen3Config, "mistral": MistralConfig}[arch]
        # Qwen3: heads 32 wide, not hidden / heads (16), as in the real models (128 x 16 heads > 1024)
        extra = {"head_dim": 32} if arch == "qwen3" else {}
        config = cls(
            vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True if tie is None else tie,
            bos_token_id=1, eos_token_id=2, pad_token_id=2, **extra,
        )
    elif arch == "mixtral":  # mixture of experts: transformers stores each block's experts as 3-D tensors
        config = MixtralConfig(
            vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=512,
            tie_word_embeddings=True if tie is None else tie, bos_token_id=1, eos_token_id=2, pad_token_id=2,
        )
    elif arch == "gemma2":  # soft-capped attention logits, which SDPA cannot compute
        from transformers import Gemma2Config

        config = Gemma2Config(
            vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, max_position_embeddings=512, bos_token_id=1, eos_token_id=2,
            pad_token_id=2, tie_word_embeddings=True if tie is None else tie,
        )
    else:
        raise ValueError(arch)
    model = AutoModelForCausalLM.from_config(config)
    # Random init gives near-uniform outputs; a larger scale makes the tiny model opinionated
    # (peaked distributions), which is what compression signals need to see.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.15)
            elif name.endswith("bias"):  # Qwen2's q/k/v biases (and llama-bias'): not zero, so the file must carry them
                p.normal_(0.0, 0.1)
    model.generation_config.pad_token_id = 2
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path
