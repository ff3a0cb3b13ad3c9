"""Writes the weights of a maskspine run (a Model Garden-flavour config) as a Model Garden
`tf.train.Checkpoint(model=...)` checkpoint: the inverse of `import-weights --format
modelgarden`, for the transfer measurement (tools/README.md, "Transfer").

    python tools/pretrained/write_modelgarden_checkpoint.py RUN_DIR OUT_PREFIX

The keys are the ones Model Garden's `maskrcnn_spinenet_coco` model writes (the variable
tables of tests/pretrained/tables), so Model Garden restores the file into its own model
(`modelgarden_outputs.py` checks that and runs it).
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "pretrained")]


def main() -> None:
    from checkpoint_fixtures import write_modelgarden_checkpoint

    from maskspine.checkpoints import load_model
    from maskspine.pretrained import names

    run, out = Path(sys.argv[1]), sys.argv[2]
    model, config, weights_file = load_model(run)
    prefixes = {part: candidates[0] for part, candidates in names.MODELGARDEN_PREFIXES.items()}
    mapping = names.modelgarden_variable_map(config, prefixes)
    weights = {w.path: w.numpy() for w in model.weights}
    assert set(mapping.values()) == set(weights), "the run's model is not a Model Garden flavour"
    path = write_modelgarden_checkpoint(out, {key: weights[t] for key, t in mapping.items()})
    print(f"{weights_file} -> {path} ({len(mapping)} variables)")


if __name__ == "__main__":
    main()
