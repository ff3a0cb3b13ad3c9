"""Writes the weights of a maskspine run (a Model Garden-flavour config) as a Model Garden
`tf.train.Checkpoint(model=...)` checkpoint: the inverse of `import-weights --format
modelgarden`, for the transfer measurement (tools/README.md, "Transfer").

    python tools/pretrained/write_modelgarden_checkpoint.py RUN_DIR OUT_PREFIX

The keys are the ones Model Garden's `maskrcnn_spinenet_coco` model writes
(`maskspine.pretrained.writer`), so Model Garden restores the file into its own model
(`modelgarden_outputs.py` checks that and runs it).
"""

from __future__ import annotations

import sys

from maskspine.pretrained.writer import write_run_as_modelgarden


def main() -> None:
    run, out = sys.argv[1], sys.argv[2]
    path, count = write_run_as_modelgarden(run, out)
    print(f"{run} -> {path} ({count} variables)")


if __name__ == "__main__":
    main()
