#!/usr/bin/env python3
"""PyTorch's own path from a DCP checkpoint to a Hugging Face folder, the
peer of `shardplan reshard --format hf` in scripts/bench_dcp.sh:

  torch.distributed.checkpoint.format_utils.dcp_to_torch_save(DCP, PT)
  state = torch.load(PT, mmap=True, weights_only=True)
  huggingface_hub.save_torch_state_dict(state, OUT, max_shard_size="5GB")

(the conversion the DCP documentation gives, then the Hugging Face writer).
The intermediate .pt file is deleted at the end. Prints the time of each step.

usage: torch_dcp_to_hf.py DCP_DIR OUT_DIR
"""

import os
import sys
import time

import torch
from huggingface_hub import save_torch_state_dict
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save


def main():
    dcp, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    pt = os.path.join(out, "intermediate.pt")
    t0 = time.time()
    dcp_to_torch_save(dcp, pt)
    t1 = time.time()
    state = torch.load(pt, mmap=True, weights_only=True)
    save_torch_state_dict(state, out, max_shard_size="5GB")
    t2 = time.time()
    del state
    os.remove(pt)
    print(f"dcp_to_torch_save {t1 - t0:.2f} s, save_torch_state_dict {t2 - t1:.2f} s, "
          f"total {t2 - t0:.2f} s", flush=True)


if __name__ == "__main__":
    main()
