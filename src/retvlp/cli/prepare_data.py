"""`retvlp prepare-data`: validate, decode and resize manifests once into webdataset tar shards with an index
(docs/scale-out.md), in parallel processes and, by rank, on several machines."""

from __future__ import annotations

import argparse
import os

from . import EXIT_FAILED, EXIT_OK, UsageError
from ._common import add_manifest_options, read_classes, read_manifests


def add_parser(parser) -> None:
    parser.description = (
        "Check every row and image (the checks of validate-data), decode and resize each image once, and "
        "write webdataset tar shards with an index (docs/scale-out.md). Runs in parallel processes and, by "
        "rank, on several machines; a killed preparation resumes when run again with the same arguments."
    )
    add_manifest_options(parser)
    parser.add_argument("--output", required=True, metavar="DIR", help="the shard directory to write")
    parser.add_argument("--shard-size", type=int, default=1024, help="rows per shard (default: 1024)")
    parser.add_argument("--image-size", type=int, default=224, help="square side in pixels (default: 224)")
    parser.add_argument("--pad-to-square", action="store_true", help="pad to square instead of resizing")
    parser.add_argument("--crop-to-fov", action="store_true", help="crop to the camera's field of view first")
    parser.add_argument(
        "--on-bad-sample",
        choices=("error", "skip"),
        default="error",
        help="rows with errors stop the preparation (error, the default) or are left out and listed (skip)",
    )
    parser.add_argument("--rank", type=int, help="this job's share (default: $RANK or $SLURM_PROCID, else 0)")
    parser.add_argument(
        "--world-size",
        type=int,
        help="number of jobs sharing the work (default: $WORLD_SIZE or $SLURM_NTASKS, else 1)",
    )
    parser.add_argument("--num-proc", type=int, help="worker processes on this machine (default: the CPUs)")
    parser.add_argument(
        "--shuffle-seed", type=int, default=0, help="seed of the row order in the shards (default: 0)"
    )
    parser.add_argument("--no-shuffle", action="store_true", help="keep the manifest order in the shards")
    parser.add_argument(
        "--max-shards", type=int, help="write at most this many shards in this call (time-boxed jobs)"
    )
    parser.add_argument(
        "--image-format",
        choices=("png", "npy"),
        default="png",
        help="png: lossless, a third of the bytes (object storage); npy: raw, nothing to decode (local disks)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (plain lines only)")
    parser.set_defaults(handler=run)


def _rank_from_environment() -> tuple[int, int]:
    """(rank, world size) of a launcher: torchrun / accelerate (RANK, WORLD_SIZE), SLURM (SLURM_PROCID,
    SLURM_NTASKS), else (0, 1)."""
    for rank, world in (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS")):
        if rank in os.environ and world in os.environ:
            return int(os.environ[rank]), int(os.environ[world])
    return 0, 1


def run(args: argparse.Namespace) -> int:
    from ..data.cache import ImageGeometry
    from ..data.shards import prepare_shards
    from ..data.validation import DataValidationError

    if args.shard_size < 1 or args.image_size < 1:
        raise UsageError("--shard-size and --image-size must be at least 1")
    rank, world = _rank_from_environment()
    rank = rank if args.rank is None else args.rank
    world = world if args.world_size is None else args.world_size
    if not 0 <= rank < world:
        raise UsageError(f"--rank {rank} must be in 0..{world - 1} (--world-size {world})")
    manifests = read_manifests(args)
    geometry = ImageGeometry(
        size=args.image_size, pad_to_square=args.pad_to_square, crop_to_fov=args.crop_to_fov
    )
    try:
        result = prepare_shards(
            manifests,
            args.output,
            geometry=geometry,
            shard_size=args.shard_size,
            class_names=read_classes(args),
            on_bad_sample=args.on_bad_sample,
            min_size=args.min_size,
            max_pixels=args.max_pixels,
            rank=rank,
            world_size=world,
            num_proc=args.num_proc,
            shuffle_seed=None if args.no_shuffle else args.shuffle_seed,
            max_shards=args.max_shards,
            image_format=args.image_format,
            show_progress=not args.no_progress,
        )
    except DataValidationError as exc:
        print(exc.report.format(max_problems=50))
        print(
            f"Stopped: rows with errors (problems in {args.output}/problems.jsonl when images were decoded). Fix "
            "them, or prepare with --on-bad-sample skip to leave them out; shards already written are kept."
        )
        return EXIT_FAILED
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    print(
        f"rank {rank}/{world}: wrote {len(result.written)} shard(s), {result.already_done} already done, "
        f"{result.num_shards} in the set."
    )
    if result.index is None:
        print("Not every shard is done yet (other ranks, or --max-shards): run again to continue; the last one to "
              "finish writes index.json.")  # fmt: skip
        return EXIT_OK
    report = result.report
    print(report.summary())
    skipped = len(report.bad_records)
    if skipped:
        print(f"{skipped} row(s) left out, listed in {args.output}/skipped_samples.jsonl")
    print(f"Wrote {result.index}: train on it with data.train: [{{shards: {args.output}}}]")
    return EXIT_OK
