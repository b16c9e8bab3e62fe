#!/usr/bin/env python3
"""MindSpore's own checkpoint resharding, timed: the peer of `shardplan reshard`.

Calls

    mindspore.transform_checkpoints(src_dir, dst_dir, ckpt_prefix,
                                    src_strategy_file, dst_strategy_file,
                                    output_format="safetensors")

once, on a directory of `rank_<r>/<name>.safetensors` files and two MindSpore
strategy files (as written by scripts/make_llama3_ckpt.py gen), and prints one
parseable line:

    RESULT peer=mindspore seconds=12.345 written_bytes=... read_bytes=... gbps_written=... gbps_read=...

`seconds` is the wall time of the call alone (the import of mindspore, about
1 s, is not included; run the script under `/usr/bin/time -v` for the whole
process and its peak RSS). `written_bytes` is the size of the files under
dst_dir after the call, `read_bytes` the size of the source files. The
destination files are `dst_dir/rank_<k>/<ckpt_prefix><k>.safetensors`, which
with the default prefix `checkpoint_` are the names `shardplan reshard` uses.

Needs MindSpore 2.10 (CPU wheel) and numpy < 2: see benches/peers/README.md.

    python benches/peers/mindspore_transform.py --src SRC --src-strategy tp8.json \\
        --dst-strategy tp2.json --out OUT [--prefix checkpoint_] [--process-num 1]
"""

import argparse
import os
import sys
import time
from pathlib import Path


def tree_bytes(d):
    return sum(p.stat().st_size for p in Path(d).rglob("*.safetensors"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", required=True, help="directory of rank_<r>/ folders")
    ap.add_argument("--src-strategy", required=True)
    ap.add_argument("--dst-strategy", required=True)
    ap.add_argument("--out", required=True, help="output directory (must not exist or be empty)")
    ap.add_argument("--prefix", default="checkpoint_", help="destination file name prefix")
    ap.add_argument("--process-num", type=int, default=1, help="MindSpore's process_num (default 1)")
    args = ap.parse_args()

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        sys.exit(f"{out} is not empty")

    import mindspore as ms  # noqa: E402  (imported late: --help works without it)

    t0 = time.perf_counter()
    ms.transform_checkpoints(
        os.path.abspath(args.src),
        os.path.abspath(args.out),
        args.prefix,
        os.path.abspath(args.src_strategy),
        os.path.abspath(args.dst_strategy),
        process_num=args.process_num,
        output_format="safetensors",
    )
    secs = time.perf_counter() - t0
    written = tree_bytes(out)
    read = tree_bytes(args.src)
    print(
        f"RESULT peer=mindspore version={ms.__version__} seconds={secs:.3f} written_bytes={written} "
        f"read_bytes={read} gbps_written={written / secs / 1e9:.3f} gbps_read={read / secs / 1e9:.3f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
