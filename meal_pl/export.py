"""Export a checkpoint as a transformers directory: the policy (LoRA merged), the tokenizer with its
preference tags, the PWN, and pi_ref (whose hidden states are the PWN's input).

    python -m meal_pl.export ckpt_path=RUN/checkpoints/last.ckpt out=DIR [reference=true]

Then `AutoModelForCausalLM.from_pretrained(DIR)` and `AutoTokenizer.from_pretrained(DIR)` load the
policy; `meal.json` says how to write a preference (tag format) and how to rebuild the PWN.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import torch

import meal_pl  # noqa: F401  (offline default before transformers is imported)
from meal_pl.models import export_policy, is_peft
from meal_pl.pwn import PreferenceWeightNet
from meal_pl.restore import load_run, parse_args, run_cli

USAGE = """# meal-pl export

- `AutoModelForCausalLM.from_pretrained(this_dir)` / `AutoTokenizer.from_pretrained(this_dir)`: the
  preference-conditioned policy (LoRA adapters, if any, merged in).
- A preference enters as K tag tokens appended right after the prompt, one per objective in the order of
  `meal.json` "objectives", values rounded to multiples of 1/tag_resolution that sum to 1, e.g.
  `{example}`. Each tag is a single special token of the tokenizer.
  Prompt format: `"\\n\\nHuman: <request>\\n\\nAssistant:"` then the tags; sample the response after them.
- `pwn.pt`: the preference-weight-net's state dict; `meal.json` "pwn" holds its constructor arguments
  (`meal_pl.pwn.PreferenceWeightNet(**pwn["config"])`). Its input is the mean over prompt tokens of the
  last hidden states of `reference/` (pi_ref, the frozen reference policy), its output the K weights.
"""


@dataclass
class ExportArgs:
    ckpt_path: str | None = None  # a .ckpt file, or a run directory (its checkpoints/last.ckpt)
    out: str | None = None  # the directory to write (created; files in it are overwritten)
    reference: bool = True  # also write pi_ref to out/reference/ (the PWN's feature extractor)


def reference_model(module):
    """pi_ref as a plain transformers model: the frozen copy, or (LoRA) the base with adapters removed."""
    if module.ref is not None:
        return module.ref
    return copy.deepcopy(module.policy).unload()


def export(module, out: Path, reference: bool = True) -> Path:
    """Write the export directory; returns it."""
    out.mkdir(parents=True, exist_ok=True)
    export_policy(module.policy).save_pretrained(str(out))
    module.tokenizer.save_pretrained(str(out))
    names, conditioner = module.objective_names, module.conditioner
    example = conditioner.format(torch.full((1, len(names)), 1.0 / len(names)))[0]
    pwn = None
    if isinstance(module.pwn, PreferenceWeightNet):
        torch.save(module.pwn.state_dict(), out / "pwn.pt")
        config = {
            "feature_dim": module.pwn.mlp[0].normalized_shape[0],
            "num_objectives": len(names),
            "hidden_dim": module.pwn.mlp[1].out_features,
            "temperature": module.pwn.temperature,
        }
        pwn = {"file": "pwn.pt", "class": "meal_pl.pwn.PreferenceWeightNet", "config": config,
               "features": "mean over prompt tokens of reference/'s last hidden states"}
    meta = {
        "objectives": names,
        "tag_format": "<{objective}:{value:.2f}>",
        "tag_resolution": conditioner.resolution,
        "tag_position": "after the prompt, before the response",
        "example_tags": example,
        "reference_point": module.reference_point,
        "lora_merged": is_peft(module.policy),
        "pwn": pwn,
        "reference": "reference/" if reference else None,
    }
    (out / "meal.json").write_text(json.dumps(meta, indent=2))
    (out / "MEAL_README.md").write_text(USAGE.format(example=example))
    if reference:
        reference_model(module).save_pretrained(str(out / "reference"))
    return out


def main(argv: list[str]) -> None:
    args = parse_args(argv, ExportArgs(), required=("ckpt_path", "out"))
    module, _, _ = load_run(args.ckpt_path)
    out = export(module, Path(args.out), args.reference)
    print(f"exported to {out}: policy + tokenizer (AutoModelForCausalLM/AutoTokenizer.from_pretrained), pwn.pt, meal.json")


if __name__ == "__main__":
    run_cli(main, ExportArgs)
