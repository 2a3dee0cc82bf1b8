"""Mixtral-style sparse decoders: Llama blocks (RoPE, RMSNorm, GQA, untied output, no biases)
whose feed-forward is a top-2 mixture of 8 SwiGLU experts (model/moe.py). `tiny` trains on the
CPU with the byte tokenizer; `8x7B` has Mixtral-8x7B's shapes (46.7B parameters, 12.9B active
per token).

    --config configs/mixtral.py:size=tiny|8x7B
"""

from configs import llama
from configs import preset_args

# size: dict of model overrides + (seq_len, batch_size, learning_rate)
SIZES = {
    # llama's tiny with a top-2 of 8 experts of half its mlp_dim
    "tiny": (
        dict(llama.SIZES["tiny"][0], num_experts=8, experts_per_token=2, expert_mlp_dim=344),
        *llama.SIZES["tiny"][1:],
    ),
    "8x7B": (
        dict(
            vocab_size=32000,
            d_model=4096,
            num_layers=32,
            num_heads=32,
            num_kv_heads=8,
            head_dim=128,
            mlp_dim=14336,
            num_experts=8,
            experts_per_token=2,
            expert_mlp_dim=14336,
            rope_theta=1_000_000.0,
        ),
        4096,
        1024,
        3e-4,
    ),
}


def get_config(arg: str = ""):
  args = preset_args.parse(arg, {"size": "tiny"}, "mixtral")
  c = llama.llama_config("mixtral", args["size"], SIZES, mlp="moe")
  c.train.moe_load_balance_loss = 0.02
  return c
