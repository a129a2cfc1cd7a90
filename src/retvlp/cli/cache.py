"""`retvlp cache`: show (info) or prune the shared image cache."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import EXIT_OK, UsageError


def add_parser(parser) -> None:
    parser.description = (
        "The image cache holds each image once per geometry, shared by every run and evaluation "
        "($RETVLP_CACHE/images or ~/.cache/retvlp/images). info: pools, images, size, last use. prune: "
        "evict least recently used shards."
    )
    parser.add_argument("action", choices=("info", "prune"))
    parser.add_argument(
        "--cache-dir", help="the cache folder (default: $RETVLP_CACHE/images or ~/.cache/retvlp/images)"
    )
    parser.add_argument(
        "--max-size", help="prune: evict until each pool holds at most this much (e.g. 50GB, 800MiB)"
    )
    parser.add_argument(
        "--older-than", type=float, metavar="DAYS", help="prune: evict shards unused for DAYS days"
    )
    parser.add_argument("--all", action="store_true", help="prune: empty the cache (legacy stores too)")
    parser.set_defaults(handler=run)


def _format_bytes(count: int) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if count < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count} B"


def run(args: argparse.Namespace) -> int:
    import time

    from ..data.cache import cache_summary, default_cache_dir, parse_size, prune_cache

    cache_dir = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    if args.action == "info":
        pools = cache_summary(cache_dir)
        total = sum(pool.num_bytes for pool in pools)
        print(f"{cache_dir}: {len(pools)} pool(s), {_format_bytes(total)}")
        for pool in pools:
            used = (
                "never"
                if pool.last_used is None
                else time.strftime("%Y-%m-%d %H:%M", time.localtime(pool.last_used))
            )
            print(
                f"  {pool.path.name}: {pool.images} image(s) ({pool.failed} failed checks) in {pool.shards} shard(s), "
                f"{_format_bytes(pool.num_bytes)}, last used {used}; {json.dumps(pool.geometry)}"
            )
        return EXIT_OK
    if args.max_size is None and args.older_than is None and not args.all:
        raise UsageError("cache prune needs --max-size SIZE, --older-than DAYS or --all")
    try:
        limit = 0 if args.all or args.max_size is None else parse_size(args.max_size)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    removed, freed = prune_cache(cache_dir, max_bytes=limit, older_than_days=args.older_than)
    print(f"{cache_dir}: removed {removed} shard(s), freed {_format_bytes(freed)}")
    return EXIT_OK
