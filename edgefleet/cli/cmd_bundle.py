"""``edgefleet keys``, ``export``, ``inspect`` and ``verify``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from edgefleet.cli.progress import say


def default_public_key(home: Path) -> Path:
    return home / "keys" / "edgefleet.pub"


def register(subparsers: Any) -> None:
    keys = subparsers.add_parser("keys", help="manage the publisher's signing keys")
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    generate = keys_sub.add_parser(
        "generate",
        help="create an Ed25519 key pair for signing bundles",
        description="Write edgefleet.key (private, mode 0600: keep it on the publishing host) "
        "and edgefleet.pub (give it to every device).",
    )
    generate.add_argument("--out", type=Path, help="folder (default: HOME/keys)")
    generate.add_argument("--force", action="store_true", help="replace an existing key pair")
    generate.set_defaults(handler=run_keys_generate)

    export = subparsers.add_parser(
        "export",
        help="export a model version as a signed bundle",
        description="Convert a registered version to the chosen formats, check each "
        "against scikit-learn (max |probability difference| <= tolerance on the "
        "holdout and the golden vectors), then write and sign the bundle. A "
        "format that fails parity fails the export: nothing is written.",
        epilog="example:\n  edgefleet export latest --out bundle/\n"
        "  edgefleet export churn@1.2.0 --formats onnx --out bundle/\n"
        "  edgefleet export latest --formats onnx,pmml --out bundle/   # PMML too",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    export.add_argument("version", help="VERSION, NAME@VERSION or 'latest'")
    export.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    export.add_argument(
        "--formats",
        help="comma-separated formats (default: every device format; add pmml for "
        "central scoring engines)",
    )
    export.add_argument("--key", type=Path, help="signing key (default: HOME/keys/edgefleet.key)")
    export.add_argument(
        "--tolerance",
        type=float,
        default=1e-5,
        help="largest allowed |probability difference| (default: 1e-5)",
    )
    export.add_argument("--force", action="store_true", help="replace an existing bundle")
    export.set_defaults(handler=run_export)

    formats = subparsers.add_parser(
        "formats",
        help="print what converts: estimators and tasks per export format, and the steps",
        description="The support matrix, computed from the converter registry: each "
        "estimator (its family and task) x export format, then the preprocessing steps "
        "'edgefleet register' reads.",
    )
    formats.set_defaults(handler=run_formats)

    inspect = subparsers.add_parser("inspect", help="show what a bundle holds (no checks)")
    inspect.add_argument("bundle", type=Path)
    inspect.add_argument("--json", action="store_true", help="print the whole manifest")
    inspect.set_defaults(handler=run_inspect)

    verify = subparsers.add_parser(
        "verify",
        help="check a bundle's signature, artifacts and golden vectors",
        description="Exit 0 only if the manifest is signed by the given key, every artifact "
        "matches its size and sha256, and each runnable format reproduces the "
        "golden vectors.",
    )
    verify.add_argument("bundle", type=Path)
    verify.add_argument(
        "--key", type=Path, help="trusted public key (default: HOME/keys/edgefleet.pub)"
    )
    verify.set_defaults(handler=run_verify)


def run_keys_generate(args: argparse.Namespace) -> int:
    from edgefleet.central.keys import default_key_dir, generate_keys

    private, public, identifier = generate_keys(
        args.out or default_key_dir(args.home), overwrite=args.force
    )
    say(f"wrote {private} (keep private) and {public} (give to devices); key id {identifier}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from edgefleet.central.export import export_bundle
    from edgefleet.central.keys import PRIVATE_NAME, default_key_dir
    from edgefleet.central.registry import Registry
    from edgefleet.converters.registry import parse_formats
    from edgefleet.edge.signing import load_private_key

    formats = parse_formats(args.formats)
    key = load_private_key(args.key or default_key_dir(args.home) / PRIVATE_NAME)
    version = Registry(args.home).get(args.version)
    if args.version == "latest":
        say(f"latest: {version.label}, the version registered last (NAME@latest picks a model)")
    say(f"exporting {version.label} ({version.family}) as {', '.join(formats)}")
    result = export_bundle(
        version,
        formats,
        args.out,
        key,
        tolerance=args.tolerance,
        overwrite=args.force,
        progress=lambda m: say(f"  {m}"),
    )
    say(f"signed bundle written to {result.bundle}")
    print(result.bundle)
    return 0


def run_formats(args: argparse.Namespace) -> int:
    from edgefleet.central.byo.reading import COVERED_STEPS
    from edgefleet.converters.decision import DECISION_MODELS
    from edgefleet.converters.ir import (
        ESTIMATOR_FAMILIES,
        REFUSED_ESTIMATORS,
        REFUSED_SETTINGS,
        estimator_tasks,
    )
    from edgefleet.converters.registry import DEFAULT_FORMATS, EXPORT_FORMATS

    names = list(EXPORT_FORMATS)
    # Computed from the converter registry: a new format, family or task shows up by itself.
    print(f"{'estimator':32} {'family':7} {'task':10} " + " ".join(f"{n:>7}" for n in names))
    reasons: dict[str, str] = {}
    for estimator, family in ESTIMATOR_FAMILIES.items():
        for task in estimator_tasks(estimator):
            marks = []
            for name in names:
                refusal = EXPORT_FORMATS[name].refusal(family, task)
                if refusal is not None and family in EXPORT_FORMATS[name].families:
                    reasons.setdefault(refusal, f"[{len(reasons) + 1}]")
                marks.append("yes" if refusal is None else reasons.get(refusal, "-"))
            print(f"{estimator:32} {family:7} {task:10} " + " ".join(f"{m:>7}" for m in marks))
    for refusal, mark in reasons.items():
        print(f"  {mark} {refusal}")
    for fmt in EXPORT_FORMATS.values():
        for limit in fmt.limits:
            print(f"  {fmt.name} refuses: {limit}")
    for estimator, why in REFUSED_ESTIMATORS.items():
        print(f"  not converted: {estimator} {why}")
    for setting, why in REFUSED_SETTINGS.items():
        print(f"  not converted: {setting}: {why}")
    print(f"  decision scores: {DECISION_MODELS}")
    print()
    for fmt in EXPORT_FORMATS.values():
        default = (
            " (exported by default)"
            if fmt.name in DEFAULT_FORMATS
            else " (central only: name it in --formats)"
        )
        print(f"{fmt.name:7} {fmt.filename:16} {fmt.description}; needs {fmt.runtime}{default}")
    print("\npreprocessing steps (edgefleet register), the same in every format:")
    for step_name, detail in COVERED_STEPS.items():
        print(f"  {step_name:18} {detail}")
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    from edgefleet.edge.bundle import read_manifest
    from edgefleet.edge.schema import CategoricalFeature

    manifest, _ = read_manifest(args.bundle)
    if args.json:
        print(json.dumps(manifest.to_dict(), indent=1))
        return 0
    print(f"{manifest.label}  ({manifest.model_family}, created {manifest.created})")
    print(f"target {manifest.target!r}: classes {list(manifest.schema.classes)}")
    print("metrics: " + ", ".join(f"{k} {v:.4g}" for k, v in manifest.metrics.items()))
    if manifest.schema.scores_only:
        from edgefleet.central.metrics import DECISION_NOTE

        print(DECISION_NOTE)
    print(f"features ({manifest.schema.n_features}):")
    for feature in manifest.schema.features:
        detail = (
            f"{len(feature.vocabulary)} categories"
            if isinstance(feature, CategoricalFeature)
            else f"[{feature.minimum}, {feature.maximum}]"
        )
        print(f"  {feature.name:24} {feature.kind:12} {detail}")
    print(f"golden vectors: {len(manifest.golden)} (tolerance {manifest.tolerance:g})")
    print("artifacts:")
    for artifact in manifest.artifacts:
        parity = manifest.parity.get(artifact.format)
        print(
            f"  {artifact.format:7} {artifact.path:22} {artifact.bytes:>11,} bytes  "
            f"sha256 {artifact.sha256[:12]}  parity {parity:.2g}  needs {artifact.runtime}"
        )
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from edgefleet.edge.backends.base import backend_spec
    from edgefleet.edge.bundle import open_bundle
    from edgefleet.edge.encoding import RecordEncoder
    from edgefleet.edge.scorer import trusted_keys_from
    from edgefleet.edge.selftest import run_self_test
    from edgefleet.errors import RuntimeUnavailableError

    bundle = open_bundle(args.bundle, trusted_keys_from(args.key or default_public_key(args.home)))
    manifest = bundle.manifest
    say(f"{manifest.label}: signature by key {bundle.signer.key_id} OK")
    for artifact in manifest.artifacts:
        say(f"  {artifact.format}: {artifact.path} sha256 OK")
    encoder = RecordEncoder(manifest.schema)
    for fmt in manifest.formats():
        try:
            spec = backend_spec(fmt)
        except RuntimeUnavailableError:
            say(f"  {fmt}: no edge runtime for this format; golden vectors not run here")
            continue
        if not spec.available():
            say(f"  {fmt}: runtime not installed ({spec.install_hint}); golden vectors not run")
            continue
        worst = run_self_test(manifest, spec.load(bundle.artifact_path(fmt)), encoder)
        say(f"  {fmt}: {len(manifest.golden)} golden vectors OK (max |diff| {worst:.2g})")
    print("OK")
    return 0
