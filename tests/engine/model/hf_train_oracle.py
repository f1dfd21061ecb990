#!/usr/bin/env python3
"""The PyTorch loop dstrain's training of a Hugging Face folder is checked against
(tests/engine/model/llama_test.cc): the folder's model in transformers, fp32 on the CPU,
torch.optim.AdamW (one parameter group, weight decay on every tensor, as DeepSpeed's AdamW), no
dropout,
gradient clipping by the global norm, a constant learning rate, and the same batch every step:
the windows [0, T) and [T, 2T) of TOKENS with next-token targets (the whole training split of a
file of 2T + 1 tokens, which a micro batch of 2 reads in full every step, in some row order; the
mean loss and its gradient do not depend on the order).

Usage: hf_train_oracle.py DIR TOKENS(comma-separated) T STEPS LR BETA1 BETA2 EPS WD CLIP
Prints one JSON line: {"losses": [...]} (the loss of each step, before its update).
"""
import json
import sys

import torch
import torch.nn.functional as F


def main():
    folder, tokens, T, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    lr, b1, b2, eps, wd, clip = (float(x) for x in sys.argv[5:11])
    from transformers import AutoModelForCausalLM
    torch.manual_seed(0)
    # eval(): no dropout (GPT-2's configs ask for 0.1), as dstrain trains; gradients still flow.
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = torch.tensor([int(t) for t in tokens.split(",")], dtype=torch.long)
    inputs = torch.stack([ids[0:T], ids[T:2 * T]])
    targets = torch.stack([ids[1:T + 1], ids[T + 1:2 * T + 1]])
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd,
                            foreach=False)
    losses = []
    for _ in range(steps):
        logits = model(input_ids=inputs).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    print(json.dumps({"losses": losses}))


if __name__ == "__main__":
    main()
