"""Export a checkpoint as a transformers directory: the policy (LoRA merged), the tokenizer with its
preference tags, the PWN, and pi_ref (whose hidden states are the PWN's input).

    python -m meal_pl.export ckpt_path=RUN/checkpoints/last.ckpt out=DIR [reference=true] [preference=[0.7,0.3]]

Backends whose network reads w beyond the tags (conditioning=embedding, svd_lora) are exported merged at
one preference, which `preference=` gives; tags, tied_tags and text need none.

Then `AutoModelForCausalLM.from_pretrained(DIR)` and `AutoTokenizer.from_pretrained(DIR)` load the
policy; `meal.json` says how to write a preference (tag format) and how to rebuild the PWN.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import torch

import meal_pl  # noqa: F401  (python -m meal_pl.<command> sets the offline default before transformers is imported)
from meal_pl.conditioning import check_preference
from meal_pl.escaping import tags_as_vocabulary
from meal_pl.models import export_policy, is_peft
from meal_pl.pwn import PreferenceWeightNet
from meal_pl.restore import load_run, parse_args, run_cli

USAGE = """# meal-pl export

- `AutoModelForCausalLM.from_pretrained(this_dir)` / `AutoTokenizer.from_pretrained(this_dir)`: the
  preference-conditioned policy (LoRA adapters, if any, merged in).
{preference}
- `pwn.pt`: the preference-weight-net's state dict; `meal.json` "pwn" holds its constructor arguments
  (`meal_pl.pwn.PreferenceWeightNet(**pwn["config"])`). Its input is the mean over prompt tokens of the
  last hidden states of `reference/` (pi_ref, the frozen reference policy), its output the K weights.
"""


@dataclass
class ExportArgs:
    ckpt_path: str | None = None  # a .ckpt file, or a run directory (its checkpoints/last.ckpt)
    out: str | None = None  # the directory to write (created; files in it are overwritten)
    reference: bool = True  # also write pi_ref to out/reference/ (the PWN's feature extractor)
    preference: list[float] | None = None  # merge the conditioning at this w (required by embedding, svd_lora)


def reference_model(module):
    """pi_ref as a plain transformers model: the frozen copy, or (LoRA) the base with adapters removed.

    The PWN reads pi_ref's hidden states of the bare prompt, where no preference is set (w = 0): the
    conditioning's modules are merged at w = 0 (with LoRA, their frozen copy, which pi_ref runs).
    """
    conditioner, zero = module.conditioner, torch.zeros(len(module.objective_names))
    if module.ref is not None:
        ref = copy.deepcopy(module.ref)
        conditioner.merge_into(ref, zero)
        return ref
    ref = copy.deepcopy(module.policy).unload()
    with conditioner.reference(ref):
        conditioner.merge_into(ref, zero)
    return ref


def merged_policy(module, preference: list[float] | None) -> tuple[torch.nn.Module, torch.Tensor | None]:
    """A plain transformers copy of the policy (LoRA merged, conditioning merged at `preference`) and that w."""
    conditioner = module.conditioner
    if preference is None and conditioner.reads_preference:
        raise ValueError(
            f"conditioning={conditioner.name} is exported merged at one preference: give preference=[w_1,...] "
            f"({len(module.objective_names)} weights summing to 1, for {module.objective_names})"
        )
    w = None if preference is None else check_preference(preference, module.objective_names)
    policy = export_policy(module.policy)
    if policy is module.policy:
        policy = copy.deepcopy(policy)  # merging edits the model in place; the module's policy stays as is
    # tied_tags' merge does not depend on w (it writes every tag row); tags' is a no-op.
    at = w if w is not None else torch.full((len(module.objective_names),), 1.0 / len(module.objective_names))
    conditioner.merge(policy, at)
    return policy, w


def export(module, out: Path, reference: bool = True, preference: list[float] | None = None) -> Path:
    """Write the export directory; returns it."""
    policy, merged_at = merged_policy(module, preference)
    out.mkdir(parents=True, exist_ok=True)
    policy.save_pretrained(str(out))
    module.tokenizer.save_pretrained(str(out))
    tags_by_id_only = tags_as_vocabulary(out)  # a user's typed tag text stays text in the exported tokenizer too
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
        **conditioner.export_fields(example, tags_by_id_only),  # how to write a preference
        "conditioning": conditioner.name,
        "merged_preference": None if merged_at is None else conditioner.quantize(merged_at[None])[0].tolist(),
        "reference_point": module.reference_point,
        "lora_merged": is_peft(module.policy),
        "pwn": pwn,
        "reference": "reference/" if reference else None,
    }
    (out / "meal.json").write_text(json.dumps(meta, indent=2))
    if merged_at is None:
        merged = "The preference is read from the tags only."
    else:
        tags = conditioner.format(merged_at[None])[0]
        merged = (f"The network is merged at the preference {tags}: it acts as the trained policy there; give "
                  "these tags after the prompt.")
    (out / "MEAL_README.md").write_text(USAGE.format(preference=conditioner.export_usage(example, merged)))
    if reference:
        reference_model(module).save_pretrained(str(out / "reference"))
    return out


def check_out(out: Path) -> None:
    """`out` must be a directory to (over)write, not a file and not a training run's directory."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"out={out} is a file; export writes a directory: give a new one, e.g. out=exported/")
    if (out / ".hydra").is_dir() or (out / "checkpoints").is_dir():
        raise ValueError(f"out={out} is a training run's directory, and the export would mix its files into it; "
                         "give a directory of its own, e.g. out=exported/")


def main(argv: list[str]) -> None:
    args = parse_args(argv, ExportArgs(), required=("ckpt_path", "out"))
    check_out(Path(args.out))  # before the checkpoint loads
    module, _, _ = load_run(args.ckpt_path)
    out = export(module, Path(args.out), args.reference, args.preference)
    print(f"exported to {out}: policy + tokenizer (AutoModelForCausalLM/AutoTokenizer.from_pretrained), pwn.pt, meal.json")


if __name__ == "__main__":
    run_cli(main, ExportArgs)
