"""The ``allxai`` command: classify and explain images; train and serve load their extras lazily."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from allxai.client.sdk import PICTURE_KINDS, AllxaiClientError, Client

DEFAULT_TARGET = "127.0.0.1:50051"


def _client(args: argparse.Namespace) -> Client:
    return Client(args.target, timeout=args.timeout, model=args.model, version=args.model_version)


def _progress(done: int, total: int) -> None:
    width = 30
    filled = width * done // max(total, 1)
    end = "\n" if done >= total else ""
    print(
        f"\rexplaining [{'#' * filled}{'.' * (width - filled)}] {done}/{total} samples",
        end=end,
        file=sys.stderr,
    )


def _classify(args: argparse.Namespace) -> int:
    failed = 0
    with _client(args) as client:
        info = client.model_info()
        results = []
        for path in args.images:
            try:
                result = client.classify(Path(path))
            except (AllxaiClientError, OSError) as exc:
                print(f"{path}: error: {exc}", file=sys.stderr)
                failed += 1
                continue
            if args.json:
                results.append({"path": str(path), **result.to_dict()})
            else:
                name = info.display_name(result.label)
                prefix = f"{path}: " if len(args.images) > 1 else ""
                print(f"{prefix}{name} {result.confidence:.1%}")
        if args.json:
            print(json.dumps(results, indent=2))
    return 1 if failed else 0


def _explain(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with _client(args) as client:
        info = client.model_info()
        try:
            result = client.explain(
                Path(args.image),
                num_samples=args.samples,
                seed=args.seed,
                top_k=args.top_k,
                pictures=args.pictures.split(","),
                target_label=args.label,
                progress=None if args.quiet else _progress,
                adaptive=args.adaptive,
            )
        except (AllxaiClientError, OSError, ValueError) as exc:
            print(f"{args.image}: error: {exc}", file=sys.stderr)
            return 1
    stem = Path(args.image).stem
    for kind, png in result.pictures.items():
        path = out / f"{stem}_{kind}.png"
        path.write_bytes(png)
        print(f"wrote {path}", file=sys.stderr)
    c, q = result.classification, result.quality
    print(
        f"{info.display_name(c.label)} {c.confidence:.1%} (explained {result.label} with "
        f"{result.num_samples} samples, seed {result.seed}; top superpixels {result.top_segments}; "
        f"surrogate R2 {q['r2']:.2f}, "
        f"stability {q['stability']:.2f}; positive weight on the cell {q['cell_share']:.0%}, background "
        f"{q['background_share']:.0%}, corners {q['corner_share']:.0%})"
    )
    return 0


def _info(args: argparse.Namespace) -> int:
    with _client(args) as client:
        info = client.model_info()
    print(
        json.dumps(
            {
                "name": info.name,
                "version": info.version,
                "classes": info.class_names,
                "input_size": info.input_size,
                "card": info.card,
            },
            indent=2,
        )
    )
    return 0


def _trainer(argv: Sequence[str]) -> int:
    from allxai.trainer.cli import main as trainer_main  # noqa: PLC0415  (needs the train extra)

    return trainer_main(argv)


def _serve() -> int:
    from allxai.server.app import main as serve_main  # noqa: PLC0415  (needs the server extra)

    return serve_main()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="allxai", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--target", default=DEFAULT_TARGET, help="gateway host:port (default %(default)s)")
    common.add_argument("--timeout", type=float, default=120.0, help="deadline per call in seconds")
    common.add_argument("--model", default="", help="model name (default: the server's)")
    common.add_argument("--model-version", type=int, default=None, help="model version (default: newest)")

    p = sub.add_parser("classify", parents=[common], help="classify images")
    p.add_argument("images", nargs="+")
    p.add_argument("--json", action="store_true", help="print JSON instead of lines")
    p.set_defaults(run=_classify)

    p = sub.add_parser("explain", parents=[common], help="explain one image and write its pictures")
    p.add_argument("image")
    p.add_argument("--out", default="results", help="folder for the pictures (default %(default)s)")
    p.add_argument("--samples", type=int, default=0, help="LIME samples (default: the server's, 1000)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--label", default="", help="class to explain (default: the predicted one)")
    p.add_argument(
        "--pictures",
        default="overlay,mask,heatmap,figure",
        help=f"comma-separated, of {', '.join(PICTURE_KINDS)}",
    )
    p.add_argument(
        "--adaptive", action="store_true", help="stop sampling once the top superpixels are stable"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_explain)

    p = sub.add_parser("info", parents=[common], help="describe the served model")
    p.set_defaults(run=_info)

    for name, what in (
        ("train", "train, cross-validate and export a model"),
        ("evaluate", "evaluate an exported model on a dataset"),
        ("export", "export a training checkpoint for serving"),
        ("compare", "compare training runs in one table"),
    ):
        sub.add_parser(name, help=f"{what} (needs allxai[train]); see allxai {name} -h", add_help=False)
    sub.add_parser("serve", help="run the gateway (needs allxai[server]); settings from ALLXAI_*")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``allxai`` command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("train", "evaluate", "export", "compare"):
        return _trainer(argv)
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve()
    try:
        code: int = args.run(args)
    except AllxaiClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
