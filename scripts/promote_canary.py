"""Move TensorFlow Serving's version labels: start a canary, promote it, roll it back, retire old versions.

One command edits everything a label move touches, then the operator applies it:

    python scripts/promote_canary.py start 2     # serve 1 and 2; "canary" -> 2 ("stable" stays)
    python scripts/promote_canary.py promote     # "stable" -> the canary's version (both stay loaded)
    python scripts/promote_canary.py rollback    # "canary" -> the stable version
    python scripts/promote_canary.py retire      # unload every version no label names
    kubectl apply -f deploy/k8s/tfserving-common -f deploy/k8s/gpu     # or .../cpu

It rewrites, in place and keeping their comments: ``deploy/tfserving/models.config`` (the
``model_version_policy { specific { versions } }`` and the ``version_labels`` values), the GPU setup's
``versions`` in ``deploy/k8s/gpu/model-source.yaml`` (what the init container fetches), and the ConfigMap
``deploy/k8s/tfserving-common/tfserving-config.yaml`` (regenerated, as ``make deploy-config`` does).
TensorFlow Serving re-reads models.config every ``--model_config_file_poll_wait_seconds`` (60 s, set in
both TensorFlow Serving Deployments), so a label move needs no restart; a *new* version on GPU needs a
``kubectl -n allxai rollout restart deploy/tfserving`` as well, since each pod fetched its versions at start.
The edited file is parsed with TensorFlow Serving's own ``ModelServerConfig`` before anything is written.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tfserving_configmap  # the sibling script (scripts/ is no package)

from allxai.tfs_protos.tensorflow_serving.config import model_server_config_pb2

REPO = Path(__file__).resolve().parent.parent
STABLE, CANARY = "stable", "canary"


@dataclass(frozen=True)
class State:
    """What models.config serves: the specific versions and the two labels."""

    versions: tuple[int, ...]
    stable: int
    canary: int


def read_state(text: str) -> State:
    config = model_server_config_pb2.ModelServerConfig()
    text_format.Parse(text, config)
    models = config.model_config_list.config
    if len(models) != 1:
        raise SystemExit(f"models.config serves {len(models)} models; this script handles exactly one")
    model = models[0]
    if model.model_version_policy.WhichOneof("policy_choice") != "specific":
        raise SystemExit("models.config must serve specific versions (model_version_policy { specific })")
    labels = dict(model.version_labels)
    if set(labels) != {STABLE, CANARY}:
        raise SystemExit(f"models.config must label exactly {STABLE!r} and {CANARY!r}, not {sorted(labels)}")
    return State(tuple(sorted(model.model_version_policy.specific.versions)), labels[STABLE], labels[CANARY])


def write_state(text: str, state: State) -> str:
    """``text`` with the versions and labels of ``state``; everything else, comments included, kept."""

    def versions(match: re.Match[str]) -> str:
        indent = match.group("indent")
        body = "".join(f"{indent}  versions: {v}\n" for v in state.versions)
        return f"{indent}specific {{\n{body}{indent}}}"

    text, count = re.subn(r"(?m)^(?P<indent>[ \t]*)specific\s*\{[^}]*\}", versions, text)
    if count != 1:
        raise SystemExit("models.config: no single `specific { ... }` block to edit")
    for key, value in ((STABLE, state.stable), (CANARY, state.canary)):
        pattern = rf'(version_labels\s*\{{\s*key:\s*"{key}"\s*value:\s*)\d+'
        text, count = re.subn(pattern, rf"\g<1>{value}", text)
        if count != 1:
            raise SystemExit(f"models.config: no single version_labels block for {key!r}")
    if read_state(text) != state:
        raise SystemExit("models.config: the edit did not give the intended versions and labels")
    return text


def next_state(state: State, action: str, version: int | None) -> State:
    if action == "start":
        assert version is not None
        if state.canary != state.stable and state.canary != version:
            raise SystemExit(f"a canary is in flight (version {state.canary}): promote or roll it back first")
        if version == state.stable:
            raise SystemExit(f"version {version} is already the stable one")
        return State(tuple(sorted({*state.versions, version})), state.stable, version)
    if action == "promote":
        if state.canary == state.stable:
            raise SystemExit(f"no canary in flight: both labels name version {state.stable}")
        return State(state.versions, state.canary, state.canary)
    if action == "rollback":
        return State(state.versions, state.stable, state.stable)
    # retire: keep only what a label names; the clients pinned to an exact older version lose it.
    return State(tuple(sorted({state.stable, state.canary})), state.stable, state.canary)


def update_model_source(path: Path, state: State) -> None:
    """The GPU init container fetches exactly the served versions (its ``versions`` key, comma-separated)."""
    text = path.read_text()
    listed = ",".join(str(v) for v in state.versions)
    text, count = re.subn(r'(?m)^(  versions: )"[^"]*"$', rf'\g<1>"{listed}"', text)
    if count != 1:
        raise SystemExit(f"{path}: no single `versions:` line to edit")
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["start", "promote", "rollback", "retire"])
    parser.add_argument("version", nargs="?", type=int, help="start: the version to try as the canary")
    parser.add_argument("--deploy-dir", type=Path, default=REPO / "deploy", help="the deploy/ folder to edit")
    args = parser.parse_args(argv)
    if (args.action == "start") != (args.version is not None):
        parser.error("give a version with start, and only with start")
    deploy = args.deploy_dir
    models_config = deploy / "tfserving" / "models.config"
    text = models_config.read_text()
    before = read_state(text)
    after = next_state(before, args.action, args.version)
    new_text = write_state(text, after)
    models_config.write_text(new_text)
    update_model_source(deploy / "k8s" / "gpu" / "model-source.yaml", after)
    configmap = deploy / "k8s" / "tfserving-common" / "tfserving-config.yaml"
    configmap.write_text(tfserving_configmap.render(deploy / "tfserving"))
    print(
        f"versions {list(before.versions)} -> {list(after.versions)}, "
        f"stable {before.stable} -> {after.stable}, canary {before.canary} -> {after.canary}"
    )
    print("next: make test, commit, kubectl apply -f deploy/k8s/tfserving-common -f deploy/k8s/<gpu|cpu>")
    if set(after.versions) - set(before.versions):
        print("GPU: also kubectl -n allxai rollout restart deploy/tfserving (pods fetch versions at start)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
