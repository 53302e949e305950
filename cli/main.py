"""The ``healthpredict`` command: the parser, the output configuration and one handler per subcommand.

Handlers import what they call when they run (Prefect, Ray, Evidently and Litestar are slow to import), so
``healthpredict drift`` does not pay for the search stack, nor ``healthpredict serve`` for Prefect.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from healthpredict.settings import (
    ALL_FAMILIES,
    Settings,
    SettingsError,
    TrainingSettings,
    apply_tool_environment,
    get_settings,
)

log = logging.getLogger("healthpredict")

Handler = Callable[[argparse.Namespace, Settings], int]
TRAINING_DEFAULTS = TrainingSettings()
# Libraries whose INFO lines narrate their internals (HTTP calls, study creation); shown with -v only.
QUIET_LOGGERS = ("httpx", "optuna", "numba", "matplotlib", "urllib3", "botocore", "alembic")


def cmd_data_fetch(args: argparse.Namespace, settings: Settings) -> int:
    from healthpredict.data import fetch_raw_data

    raw = fetch_raw_data(settings, args.source)
    print(f"verified {raw.source}\n  sha256 {raw.sha256}\n  cached at {raw.path}")
    return 0


def cmd_split(args: argparse.Namespace, settings: Settings) -> int:
    from healthpredict.reporting import split_summary_markdown
    from healthpredict.split import run_split

    manifest = run_split(settings, args.source)
    print(split_summary_markdown(manifest))
    print(f"\nsplit {manifest['split_id']} written to {settings.data.artifact_uri}")
    return 0


def _training_settings(args: argparse.Namespace, settings: Settings) -> Settings:
    """Apply search-budget flags on top of the environment's settings (an unset flag keeps the setting)."""
    return settings.with_training(
        trials_per_family=args.trials_per_family, time_budget_s=args.time_budget_s, families=args.families
    )


def cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    from healthpredict.train import train_models, training_summary

    result = train_models(_training_settings(args, settings))
    print(training_summary(result))
    return 0 if result.registered_version else 3


def cmd_promote(args: argparse.Namespace, settings: Settings) -> int:
    from healthpredict.promote import promote

    outcome = promote(settings, deploy=not args.no_deploy)
    print(outcome.summary())
    return 0 if outcome.promoted else 4


def cmd_deploy(args: argparse.Namespace, settings: Settings) -> int:
    from healthpredict.deploy import deploy_version
    from healthpredict.registry import CHALLENGER, configure_tracking, version_by_alias

    configure_tracking(settings)
    version = args.version
    if version is None:
        challenger = version_by_alias(settings, CHALLENGER)
        if challenger is None:
            raise RuntimeError(f"{settings.tracking.model_name!r} has no challenger; pass --version")
        version = str(challenger.version)
    print(deploy_version(settings, version).summary())
    return 0


def cmd_drift(args: argparse.Namespace, settings: Settings) -> int:
    from healthpredict.drift import monitor_batch

    result = monitor_batch(settings, args.batch, html_report=args.report)
    print(result.summary_markdown())
    return 3 if args.fail_on_alert and result.alert else 0


def cmd_blocks_create(args: argparse.Namespace, settings: Settings) -> int:
    from flows.blocks import create_aws_blocks

    slugs = create_aws_blocks(settings, args.bucket)
    print(f"saved Prefect blocks {slugs['credentials']} and {slugs['bucket']}")
    return 0


def cmd_improve(args: argparse.Namespace, settings: Settings) -> int:
    from healthpredict.improve import ImprovementOptions, improve

    options = ImprovementOptions(
        batches=args.batches, force=tuple(args.force or ()), inject=args.inject, inject_batch=args.inject_batch,
        inject_severity=args.inject_severity, deploy=not args.no_deploy,
    )  # fmt: skip
    settings = _training_settings(args, settings)
    if args.label_delay is not None:
        settings = replace(settings, improvement=replace(settings.improvement, label_delay_batches=args.label_delay))
    result = improve(settings, options)
    print(result.summary_markdown())
    return 0


def cmd_predict(args: argparse.Namespace, settings: Settings) -> int:
    from service.batch_scoring import score_file

    result = score_file(settings, args.input, args.output, args.model_uri)
    print(result.summary())
    return 3 if result.rejected else 0


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from service.app import create_app
    from service.server import run_server

    host = args.host or settings.service.host
    port = args.port if args.port is not None else settings.service.port
    run_server(create_app(settings), settings, host, port)
    return 0


def check_local_raw_data(settings: Settings, source: str | None) -> None:
    """Fail what no retry can heal before Prefect starts (its server takes seconds): a local raw file that is
    missing (checked before pandas is even imported), differs from its checksum or fails its schema; a valid one
    is cached, so the flow reads it from there. A remote source is left to the flow's task, which retries what may
    heal."""
    from healthpredict.sources import is_remote_source, local_source_file

    source = source or settings.data.raw_data
    if is_remote_source(source):
        return
    local_source_file(source)
    from healthpredict.data import fetch_raw_data

    fetch_raw_data(settings, source)


def cmd_pipeline(args: argparse.Namespace, settings: Settings) -> int:
    check_local_raw_data(settings, args.source)
    from flows.pipeline import pipeline
    from healthpredict.deploy.local import start_service, stop, wait_ready
    from healthpredict.deploy.verify import http_json, smoke_records, to_request_records

    outcome = pipeline(
        source=args.source,
        trials_per_family=args.trials_per_family,
        time_budget_s=args.time_budget_s,
        families=list(args.families) if args.families else None,
        no_deploy=args.no_deploy,
    )
    print(outcome["training"]["summary"])
    print(outcome["promotion"]["summary"])
    if not outcome["promotion"]["promoted"]:
        return 4
    port = args.port if args.port is not None else settings.service.port
    base_url = f"http://{settings.service.host}:{port}"
    service = start_service(settings, settings.service.model_uri, port, settings.home / "service.log")
    try:
        wait_ready(base_url, service)
        sample = smoke_records(settings, 1)
        answer = http_json("POST", f"{base_url}/v1/predict", to_request_records(sample)[0])
        print(f"\nThe champion is served at {base_url} (log {settings.home / 'service.log'}).")
        print(f"Sample prediction for test encounter {int(sample['encounter_id'].iloc[0])}: {answer}")
        print(f"Try: curl -s {base_url}/v1/model ; the API is described at {base_url}/schema/swagger")
        if args.exit_after_sample:
            return 0
        print("Serving until interrupted (Ctrl-C).")
        service.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stop(service)
    return 0


def _shared_options() -> dict[str, argparse.ArgumentParser]:
    """Options several commands take, each declared once (argparse ``parents``)."""
    source = argparse.ArgumentParser(add_help=False)
    source.add_argument(
        "--source", help="zip, csv, URL or fsspec URI of the raw data (default: HEALTHPREDICT_RAW_DATA)"
    )
    budget = argparse.ArgumentParser(add_help=False)
    budget.add_argument(
        "--trials-per-family", type=int, metavar="N",
        help="trials per model family "
        f"(default: HEALTHPREDICT_TRIALS_PER_FAMILY or {TRAINING_DEFAULTS.trials_per_family})",
    )  # fmt: skip
    budget.add_argument(
        "--time-budget-s", type=int, metavar="S",
        help="wall-clock budget of a search "
        f"(default: HEALTHPREDICT_TIME_BUDGET_S or {TRAINING_DEFAULTS.time_budget_s})",
    )  # fmt: skip
    budget.add_argument(
        "--families", nargs="+", choices=ALL_FAMILIES,
        help=f"model families to search (default: HEALTHPREDICT_FAMILIES or {' '.join(ALL_FAMILIES)})",
    )  # fmt: skip
    no_deploy = argparse.ArgumentParser(add_help=False)
    no_deploy.add_argument(
        "--no-deploy", action="store_true",
        help="move the champion alias right after the gate, without a verified deployment",
    )  # fmt: skip
    return {"source": source, "budget": budget, "no_deploy": no_deploy}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="healthpredict",
        description="HealthPredict: readmission model from raw data to a served, monitored champion.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="every library's log lines, at debug level")
    shared = _shared_options()
    source, budget, no_deploy = shared["source"], shared["budget"], shared["no_deploy"]
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = commands.add_parser("data", help="raw data acquisition")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    fetch = data_commands.add_parser(
        "fetch", parents=[source], help="download or read the raw UCI data, verify its checksum and schema, cache it"
    )
    fetch.set_defaults(handler=cmd_data_fetch)

    split = commands.add_parser(
        "split", parents=[source], help="clean and split the raw data (patient-disjoint train/val/test + batches)"
    )
    split.set_defaults(handler=cmd_split)

    train = commands.add_parser(
        "train", parents=[budget],
        help="Ray Tune search over logistic regression, random forest and XGBoost; register the challenger",
    )  # fmt: skip
    train.set_defaults(handler=cmd_train)

    promote = commands.add_parser(
        "promote", parents=[no_deploy],
        help="gate the challenger against the champion on the same holdout; deploy it and move champion",
    )  # fmt: skip
    promote.set_defaults(handler=cmd_promote)

    predict = commands.add_parser(
        "predict",
        help="score a CSV or Parquet file of encounters through the service's validation; invalid rows go to a "
        "rejects file (exit 3 when there are any)",
    )
    predict.add_argument("--input", type=Path, required=True, help="encounters, dataset column names (.csv/.parquet)")
    predict.add_argument(
        "--output", type=Path, required=True, help="predictions (.parquet); rejects go to <output>.rejects.parquet"
    )
    predict.add_argument("--model-uri", help="model to score with (default: HEALTHPREDICT_MODEL_URI, the champion)")
    predict.set_defaults(handler=cmd_predict)

    serve = commands.add_parser("serve", help="serve predictions from HEALTHPREDICT_MODEL_URI (uvicorn, Litestar)")
    serve.add_argument("--host", help="bind address (default HEALTHPREDICT_HOST or 127.0.0.1)")
    serve.add_argument(
        "--port", type=int,
        help="port (default HEALTHPREDICT_PORT or 8000); 0: a free port the system picks, named in the log line "
        "'Uvicorn running on http://HOST:PORT'",
    )  # fmt: skip
    serve.set_defaults(handler=cmd_serve)

    pipeline = commands.add_parser(
        "pipeline", parents=[source, budget, no_deploy],
        help="raw data → split → search → registry → gate → verified deployment → champion served (Prefect flow)",
    )  # fmt: skip
    pipeline.add_argument("--port", type=int, help="port of the served champion (default HEALTHPREDICT_PORT or 8000)")
    pipeline.add_argument(
        "--exit-after-sample", action="store_true", help="stop the service after the sample prediction"
    )
    pipeline.set_defaults(handler=cmd_pipeline)

    deploy = commands.add_parser(
        "deploy",
        help="deploy a model version (HEALTHPREDICT_DEPLOY_TARGET: local or kubernetes), verify it live, move champion",
    )
    deploy.add_argument("--version", help="registered version to deploy (default: the challenger)")
    deploy.set_defaults(handler=cmd_deploy)

    blocks = commands.add_parser("blocks", help="Prefect blocks (prefect-aws) for an S3 artifact store")
    blocks_commands = blocks.add_subparsers(dest="blocks_command", required=True, metavar="SUBCOMMAND")
    blocks_create = blocks_commands.add_parser(
        "create", help="save AwsCredentials and S3Bucket blocks from the AWS_* environment (PREFECT_API_URL's server)"
    )
    blocks_create.add_argument("--bucket", required=True, help="S3 bucket for flow results")
    blocks_create.set_defaults(handler=cmd_blocks_create)

    drift = commands.add_parser(
        "drift", help="drift of a future batch against the champion's training data (logged to MLflow)"
    )
    drift.add_argument("--batch", type=int, required=True, help="future batch number, 1 = the first after training")
    drift.add_argument(
        "--fail-on-alert", action="store_true", help="exit 3 when dataset, prediction or label drift is flagged"
    )
    drift.add_argument(
        "--report", action="store_true", help="also build Evidently's HTML report and log it to MLflow (about 5 s more)"
    )
    drift.set_defaults(handler=cmd_drift)

    improve = commands.add_parser(
        "improve", parents=[budget, no_deploy],
        help="continuous improvement: score each future batch with the champion, check drift, retrain, gate, deploy",
    )  # fmt: skip
    improve.add_argument("--batches", type=int, help="only the first N future batches (default: all)")
    improve.add_argument(
        "--label-delay", type=int, metavar="N",
        help="batch k's labels arrive with batch k + N (default: HEALTHPREDICT_LABEL_DELAY_BATCHES, 1)",
    )  # fmt: skip
    improve.add_argument(
        "--force", nargs="+", metavar="BATCH", help="retrain on these batches whatever the rule says ('all': every one)"
    )
    improve.add_argument(
        "--inject", help="drift scenario (healthpredict.inject: covariate_shift, label_prior_shift, ...) for a batch"
    )
    improve.add_argument("--inject-batch", type=int, default=1, help="batch the scenario is applied to (default 1)")
    improve.add_argument("--inject-severity", type=float, default=0.5, help="scenario severity in (0, 1] (default 0.5)")
    improve.set_defaults(handler=cmd_improve)
    return parser


def configure_output(verbose: bool) -> None:
    """Our progress lines at INFO; other libraries' warnings and errors only, unless ``-v`` shows everything.

    Prefect, when a command imports it, installs its own console handler on the root logger; our records
    reach it the same way, so the output keeps one format.
    """
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s - %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_output(args.verbose)
    try:
        settings = get_settings()
        apply_tool_environment(settings, verbose=args.verbose)  # before Prefect, Ray or MLflow are imported
        handler: Handler = args.handler
        return handler(args, settings)
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
