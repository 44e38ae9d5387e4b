"""``python -m ml.serve``: run the scoring service (the same as ``loopline serve``)."""

from __future__ import annotations

import argparse
import os

from ml.config import Paths, load_config
from ml.serve.server import run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ml.serve", description=__doc__)
    parser.add_argument("--config", help="config file (default $LOOPLINE_CONFIG or ./loopline.yaml)")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--workers", type=int)
    parser.add_argument("--store-url", help="SQLAlchemy URL of the prediction store")
    parser.add_argument("--poll-interval", type=float, help="seconds between champion alias checks")
    parser.add_argument(
        "--flush-interval", type=float, help="seconds a capture waits at most before its INSERT"
    )
    parser.add_argument("--queue-size", type=int, help="capture queue capacity (requests)")
    parser.add_argument("--full-policy", choices=["block", "shed"], help="what a full capture queue does")
    parser.add_argument("--block-timeout", type=float, help="block policy: seconds to wait for queue space")
    parser.add_argument("--max-batch-size", type=int)
    parser.add_argument("--no-capture", action="store_true", help="do not write predictions to the store")
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    run(
        load_config(args.config),
        Paths.from_env(),
        host=args.host,
        port=args.port,
        workers=args.workers,
        store_url=args.store_url,
        poll_interval_seconds=args.poll_interval,
        capture_flush_interval_seconds=args.flush_interval,
        capture_queue_size=args.queue_size,
        capture_full_policy=args.full_policy,
        capture_block_timeout_seconds=args.block_timeout,
        max_batch_size=args.max_batch_size,
        capture=False if args.no_capture else None,
    )


if __name__ == "__main__":
    main()
