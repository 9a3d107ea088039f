"""The `retail-pipeline` command: shelf lookups and the published-benchmark reproduction."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger("retail_pipeline.cli")


def _recommend(args: argparse.Namespace) -> int:
    from retail_pipeline.lookup import homepage_shelf
    from retail_pipeline.resources.settings import PipelineSettings

    warehouse = Path(args.warehouse or PipelineSettings().warehouse_path)
    shelf = homepage_shelf(warehouse, args.customer, args.n)
    header = (
        f"customer {shelf.customer_id}: personalised shelf (model: {shelf.model})"
        if shelf.known_customer
        else f"customer {shelf.customer_id} is not in the model: popularity fallback shelf"
    )
    lines = [header]
    for row in shelf.items.itertuples(index=False):
        lines.append(f"{row.rank:>3}  {row.item_id:<10} {row.product_name:<40} {row.score:.4f}")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from dataclasses import fields, replace

    from retail_pipeline.core.benchmark_splits import PUBLISHED_PROTOCOL, reproduce
    from retail_pipeline.core.lightgcn import LightGCNConfig

    known = {f.name: f.type for f in fields(LightGCNConfig)}
    overrides = {}
    for item in args.set or []:
        key, equals, value = item.partition("=")
        if not equals:
            raise ValueError(f"--set {item!r}: expected FIELD=VALUE, e.g. --set gamma=0.2")
        if key not in known:
            raise ValueError(f"unknown LightGCN setting {key!r}; known: {sorted(known)}")
        overrides[key] = _setting_value(value)
    config = replace(PUBLISHED_PROTOCOL, **overrides)
    logger.info("reproducing on %s with %s", args.directory, config)
    metrics = reproduce(Path(args.directory), config, max_epochs=args.max_epochs)
    sys.stdout.write(json.dumps(metrics, sort_keys=True) + "\n")
    return 0


def _setting_value(text: str):
    """A --set value: JSON (0.2, true, null, "bpr"), else the text itself (bpr)."""
    if text in ("", "None"):
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # a bare word such as full_softmax; LightGCNConfig checks its type


def _backtest(args: argparse.Namespace) -> int:
    import pandas as pd

    from retail_pipeline.core.backtest import backtest_shelves
    from retail_pipeline.core.cleaning import (
        CleaningRules,
        aggregate_interactions,
        clean_purchase_lines,
    )
    from retail_pipeline.core.sources import read_transactions, resolve_source
    from retail_pipeline.resources.settings import PipelineSettings
    from retail_pipeline.resources.warehouse import read_query

    settings = PipelineSettings()
    warehouse = Path(args.warehouse or settings.warehouse_path)
    run = read_query(warehouse, "SELECT * FROM shelf_run")
    as_of = pd.Timestamp(args.as_of) if args.as_of else None
    served_as_of = str(run["as_of"].iloc[0]) if len(run) else ""
    if not served_as_of:
        raise SystemExit(
            f"the shelves in {warehouse} were built on all data, not as of a past day: "
            "materialise with RETAIL_AS_OF=YYYY-MM-DD first"
        )
    if as_of is not None and as_of != pd.Timestamp(served_as_of):
        raise SystemExit(
            f"the shelves in {warehouse} were built as of {served_as_of}, not {args.as_of}"
        )
    as_of = pd.Timestamp(served_as_of)
    # The workbook the shelves were built from, as recorded with them.
    source = str(run["data_source"].iloc[0])
    if source != settings.data_source:
        logger.warning(
            "backtesting on %s, the source the shelves were built from (RETAIL_DATA_SOURCE is %s)",
            source,
            settings.data_source,
        )
    raw, _ = read_transactions(
        resolve_source(source, settings.cache_path()), settings.sheet_names()
    )
    history = aggregate_interactions(clean_purchase_lines(raw, CleaningRules(as_of=as_of))[0])
    everything = aggregate_interactions(clean_purchase_lines(raw, CleaningRules())[0])
    shelves = read_query(
        warehouse, "SELECT customer_id, rank, item_id FROM homepage_recommendations"
    )
    result = backtest_shelves(shelves, history, everything, as_of, horizon_days=args.horizon_days)
    sys.stdout.write(
        f"backtest: shelves built as of {as_of.date()} ({run['model'].iloc[0]}), scored on "
        f"{result.future_pairs:,} pairs first bought by {result.customers:,} known customers "
        f"before {result.horizon_end.date()}\n"
        + result.table.to_string(index=False, float_format=lambda v: f"{v:.4f}")
        + "\n"
    )
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(prog="retail-pipeline", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    recommend = commands.add_parser("recommend", help="print a customer's homepage shelf")
    recommend.add_argument("--customer", required=True, help="customer id, e.g. 12748")
    recommend.add_argument(
        "--n", type=_positive_int, default=20, help="items to show (default 20, at most 20)"
    )
    recommend.add_argument("--warehouse", help="DuckDB file (default RETAIL_WAREHOUSE)")
    recommend.set_defaults(handler=_recommend)

    backtest = commands.add_parser(
        "backtest",
        help="score shelves materialised with RETAIL_AS_OF against what customers bought "
        "after that day, beside popularity, item-kNN and EASE fitted on the same history",
    )
    backtest.add_argument("--as-of", help="expected RETAIL_AS_OF of the shelves (checked)")
    backtest.add_argument("--horizon-days", type=int, default=90, help="days after as-of")
    backtest.add_argument("--warehouse", help="DuckDB file (default RETAIL_WAREHOUSE)")
    backtest.set_defaults(handler=_backtest)

    repro = commands.add_parser(
        "reproduce",
        help="train LightGCN on a train.txt/valid.txt/test.txt split under the published "
        "protocol; prints test metrics as JSON on the last line",
    )
    repro.add_argument("directory", help="folder with train.txt, valid.txt and test.txt")
    repro.add_argument("--max-epochs", type=int, default=None, help="cap on training epochs")
    repro.add_argument(
        "--set",
        action="append",
        metavar="FIELD=VALUE",
        help="override a LightGCNConfig field (a JSON value or a bare word), e.g. --set "
        "gamma=0.2 --set loss=full_softmax",
    )
    repro.set_defaults(handler=_reproduce)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return args.handler(args)
    except (FileNotFoundError, ValueError) as error:
        # RetailInputError is a ValueError: bad input gets its message, not a traceback.
        logger.error("%s", error)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
