#!/usr/bin/env python3
"""Class defaults beside a published config.json that leaves sizes to them.

Gemma 3's VLM config gives its text_config only what differs from
transformers' Gemma3TextConfig; the recipe checker (bridgec) reads JSON, not
Python, so this writes transformers' defaults of that section beside the
file, as recipes/models/<name>.defaults.json:

    {"section": "text_config", "model_type": "gemma3_text", "transformers": "5.24.0", "defaults": {...}}

Only the keys the file leaves out are written. tests/oracle/test_recipes.py
checks each such file against the installed transformers.

  scripts/class_defaults.py recipes/models/google__gemma-3-4b-it.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def class_defaults(config_path: Path) -> dict:
    import transformers

    published = json.loads(config_path.read_text(), parse_constant=float)
    section = "text_config" if isinstance(published.get("text_config"), dict) else ""
    own = published[section] if section else published
    model_type = own.get("model_type") or published["model_type"]
    base = transformers.AutoConfig.for_model(model_type).to_dict()
    # Not sizes, or derived from the file's own sizes (layer_types follows
    # num_hidden_layers): left to the file.
    junk = {"transformers_version", "_name_or_path", "id2label", "label2id", "architectures", "model_type",
            "layer_types"}
    missing = {k: v for k, v in sorted(base.items()) if k not in own and k not in junk}
    return {"section": section, "model_type": model_type, "transformers": transformers.__version__,
            "defaults": missing}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", nargs="+", type=Path, help="a published config.json under recipes/models")
    for path in ap.parse_args().config:
        out = path.with_name(path.stem + ".defaults.json")
        out.write_text(json.dumps(class_defaults(path), indent=2) + "\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
