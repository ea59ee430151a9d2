"""Build the model a checkpoint describes without fetching or reading pretrained weights.

Loading a checkpoint (eval, predict, viz, export, resume) overwrites every tensor, so the
backbone's ImageNet weights are never needed: building with them would download from the
network (failing on an offline cluster) or require a local file that only the training machine
had. This is the one build path for loading; it never touches the network.
"""

from __future__ import annotations

from ctxseg.config import Recipe, validate_recipe


def without_pretrained(recipe: Recipe) -> Recipe:
    """A copy of `recipe` whose backbone starts from random initialisation."""
    d = recipe.to_dict()
    if d["model"]["backbone"].get("pretrained"):
        d["model"]["backbone"]["pretrained"] = None
    return validate_recipe(d)


def build_for_loading(recipe: Recipe):
    """The recipe's Segmentor with no pretrained weights, ready for `load_state_dict`."""
    from ctxseg.models.segmentor import build_segmentor

    return build_segmentor(without_pretrained(recipe))
