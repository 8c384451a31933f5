"""The light (torch-free) parts of the options: concepts and token lists."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

# "none": token row only (textual inversion); "unet": the whole UNet + token rows (the paper's
# full fine-tune baseline, DreamBooth-like). Both are langfree's, for the comparison table.
FREEZE_MODELS = ("crossattn_kv", "crossattn", "none", "unet")


@dataclass(frozen=True)
class Concept:
    """One concept of ``--concepts_list`` (the official JSON's keys)."""

    instance_prompt: str
    instance_data_dir: str
    class_prompt: str | None = None
    class_data_dir: str | None = None


def read_concepts_list(path: str | Path) -> tuple[Concept, ...]:
    """``--concepts_list FILE.json``: a list of {instance_prompt, instance_data_dir, class_prompt,
    class_data_dir}."""
    try:
        items = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"--concepts_list {path}: cannot read it as JSON ({exc})") from None
    if not isinstance(items, list) or not items:
        raise ValueError(f"--concepts_list {path}: expected a non-empty JSON list of concepts")
    keys = ("instance_prompt", "instance_data_dir", "class_prompt", "class_data_dir")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not {"instance_prompt", "instance_data_dir"} <= set(item):
            raise ValueError(f"--concepts_list {path}: entry {i} needs instance_prompt and "
                             "instance_data_dir (and class_prompt, class_data_dir for the prior)")
        out.append(Concept(**{k: item.get(k) for k in keys}))
    return tuple(out)



def parse_modifier_tokens(text: str | None) -> list[str]:
    """``"<new1>+<new2>"`` -> ["<new1>", "<new2>"] (the seed's ``--modifier_token`` syntax)."""
    tokens = [t.strip() for t in (text or "").split("+") if t.strip()]
    if len(set(tokens)) != len(tokens):
        raise ValueError(f"--modifier_token {text!r}: a token is repeated")
    return tokens
