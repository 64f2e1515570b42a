"""What every model card of the package says besides its method's template (`model_cards/*.md`): the training data,
the hyperparameter tables, the precision, the limitations, the license, the framework versions and the papers'
BibTeX. `hub.render_model_card` passes these sections to the template; this module never names a method."""

from __future__ import annotations

import importlib.metadata
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import UsageError
from .version import __version__

PACKAGE_NAME = "hf-masked-vl"  # the distribution name (`pip install hf-masked-vl`); `import hf_masked_vl`
# `datasets` builders that read local files: a run with one of them names no Hub dataset.
LOCAL_BUILDERS = frozenset(
    {"arrow", "audiofolder", "csv", "imagefolder", "json", "pandas", "parquet", "sql", "text", "videofolder",
     "webdataset", "xml"}
)  # fmt: skip
# A Hub license id (https://huggingface.co/docs/hub/repositories-licenses): lower case, e.g. apache-2.0, cc-by-4.0.
LICENSE_ID = re.compile(r"^[a-z0-9][a-z0-9.+-]*$")
FRAMEWORKS = ("transformers", "torch", "timm", "datasets", "huggingface_hub")

# The papers of the methods, by key (`Method.citations`). Sources: the authors' own BibTeX where they publish one
# (A-CLIP's and UTA's official READMEs), else the proceedings' entries.
CITATIONS: dict[str, str] = {
    "a_clip": """@inproceedings{Yang_2023_ICCV,
  title     = {Attentive Mask {CLIP}},
  author    = {Yang, Yifan and Huang, Weiquan and Wei, Yixuan and Peng, Houwen and Jiang, Xinyang and Jiang, Huiqiang
               and Wei, Fangyun and Wang, Yin and Hu, Han and Qiu, Lili and Yang, Yuqing},
  booktitle = {Proceedings of the IEEE/CVF International Conference on Computer Vision (ICCV)},
  pages     = {2771--2781},
  year      = {2023}
}""",
    "uta": """@article{liu2024enhancing,
  title   = {Enhancing Vision-Language Model with Unmasked Token Alignment},
  author  = {Liu, Jihao and Zheng, Jinliang and Liu, Boxiao and Liu, Yu and Li, Hongsheng},
  journal = {Transactions on Machine Learning Research},
  issn    = {2835-8856},
  year    = {2024},
  url     = {https://openreview.net/forum?id=JkFEVbW6wE}
}""",
    "attg_mae": """@inproceedings{sick2025attention,
  title     = {Attention-Guided Masked Autoencoders for Learning Image Representations},
  author    = {Sick, Leon and Engel, Dominik and Hermosilla, Pedro and Ropinski, Timo},
  booktitle = {Proceedings of the IEEE/CVF Winter Conference on Applications of Computer Vision (WACV)},
  pages     = {836--846},
  year      = {2025}
}""",
    "mre": """@inproceedings{taguchi2024sam,
  title     = {{SAM} Helps {SSL}: Mask-guided Attention Bias for Self-supervised Learning},
  author    = {Taguchi, Kensuke and Kawai, Takehiko and Imaeda, Wataru and Fujiyoshi, Hironobu},
  booktitle = {British Machine Vision Conference (BMVC)},
  year      = {2024}
}""",
    "mae": """@inproceedings{he2022masked,
  title     = {Masked Autoencoders Are Scalable Vision Learners},
  author    = {He, Kaiming and Chen, Xinlei and Xie, Saining and Li, Yanghao and Doll{\\'a}r, Piotr and Girshick, Ross},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  pages     = {16000--16009},
  year      = {2022}
}""",
    "dino": """@inproceedings{caron2021emerging,
  title     = {Emerging Properties in Self-Supervised Vision Transformers},
  author    = {Caron, Mathilde and Touvron, Hugo and Misra, Ishan and J{\\'e}gou, Herv{\\'e} and Mairal, Julien and
               Bojanowski, Piotr and Joulin, Armand},
  booktitle = {Proceedings of the IEEE/CVF International Conference on Computer Vision (ICCV)},
  pages     = {9650--9660},
  year      = {2021}
}""",
    "lit": """@inproceedings{zhai2022lit,
  title     = {{LiT}: Zero-Shot Transfer with Locked-image Text Tuning},
  author    = {Zhai, Xiaohua and Wang, Xiao and Mustafa, Basil and Steiner, Andreas and Keysers, Daniel and
               Kolesnikov, Alexander and Beyer, Lucas},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  pages     = {18123--18133},
  year      = {2022}
}""",
}

DEMO_DATA = (
    "the package's embedded demo: synthetic images of coloured shapes with generated captions, made on the machine "
    "that trained (`hf_masked_vl.data.demo`; not a Hub dataset)"
)
DEMO_LIMITATION = (
    "**This is a toy.** It is a tiny model trained for minutes on synthetic coloured shapes (the package's demo): "
    "it shows that the training, saving and loading work, and recognises nothing but those shapes. Do not use it on "
    "real images."
)
GENERAL_LIMITATION = (
    "The figures above are measured on the data they name, with this package's protocols; they do not predict "
    "accuracy on other data. The model carries the biases of its training data."
)
NO_LICENSE = (
    "No license was chosen when this model was saved (`--license`), so its metadata names none. A model that "
    "carries or was distilled from another model's weights (a UTA student carries its CLIP teacher's text tower; "
    "a fine-tuned model its start checkpoint) may be bound by that model's license."
)


def check_license(license_id: str | None, flag: str = "--license") -> None:
    """A `UsageError` unless `license_id` is None or has the form of a Hub license id (lower case: `apache-2.0`,
    `cc-by-4.0`, `other`); whether the Hub knows it is checked before a push (`hub.check_card_metadata`)."""
    if license_id is None or LICENSE_ID.match(license_id):
        return
    hint = (
        f": the Hub's license ids are lower case, e.g. {flag} {license_id.lower()}"
        if license_id.lower() != license_id
        else ""
    )
    raise UsageError(
        f"{flag} {license_id!r} is not a Hub license id (see https://huggingface.co/docs/hub/repositories-licenses: "
        f"apache-2.0, mit, cc-by-4.0, other, ...){hint}"
    )


def hub_dataset_id(name: str | None) -> str | None:
    """`name` when it can be a Hub dataset id (card metadata `datasets`, model-index `dataset.type`); None for the
    embedded demo (`None` / `demo`), a local builder (`parquet`, `imagefolder`, ...) or a local path."""
    if not name or name == "demo" or name in LOCAL_BUILDERS or name.count("/") > 1:
        return None
    if os.path.exists(name) or name.startswith((".", "/", "~")):
        return None
    return name


def framework_versions() -> dict[str, str]:
    """The versions of this package and of the frameworks it trains with, by distribution name."""
    versions = {PACKAGE_NAME: __version__}
    for name in FRAMEWORKS:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def shown(value: Any) -> str:
    """A value as a table cell: enums by value, floats in short form, sequences comma-separated."""
    value = getattr(value, "value", value)
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(shown(item) for item in value)
    return str(value).replace("|", "\\|")


def markdown_table(rows: Mapping[str, Any], header: tuple[str, str]) -> str:
    """A two-column Markdown table of `rows` (name → value)."""
    lines = [f"| {header[0]} | {header[1]} |", "| --- | --- |"]
    lines += [f"| `{name}` | {shown(value)} |" for name, value in rows.items()]
    return "\n".join(lines)


def training_details(
    training_data: str, hyperparameters: Mapping[str, Any], config_values: Mapping[str, Any], precision: str | None
) -> str:
    """The card's training data line and its hyperparameter tables (beside the recipe's account)."""
    parts = [f"**Training data:** {training_data}."] if training_data else []
    if precision:
        parts.append(f"**Precision:** {precision}.")
    if hyperparameters:
        parts.append("### Training hyperparameters\n\n" + markdown_table(hyperparameters, ("argument", "value")))
    if config_values:
        parts.append("### Method configuration\n\n" + markdown_table(config_values, ("config field", "value")))
    return "\n\n".join(parts)


def closing_sections(demo: bool, license_id: str | None, citations: Iterable[str]) -> str:
    """The card's last sections: limitations, license, framework versions and the papers' BibTeX."""
    limitations = [DEMO_LIMITATION] if demo else []
    parts = ["## Limitations\n\n" + "\n\n".join([*limitations, GENERAL_LIMITATION])]
    parts.append("## License\n\n" + (f"`{license_id}` (chosen with `--license`)." if license_id else NO_LICENSE))
    versions = framework_versions()
    parts.append("## Framework versions\n\n" + "\n".join(f"- {name} {version}" for name, version in versions.items()))
    entries = [CITATIONS[key] for key in dict.fromkeys(citations) if key in CITATIONS]
    if entries:
        parts.append("## Citation\n\n```bibtex\n" + "\n\n".join(entries) + "\n```")
    return "\n\n".join(parts)


__all__ = [
    "CITATIONS",
    "PACKAGE_NAME",
    "check_license",
    "closing_sections",
    "framework_versions",
    "hub_dataset_id",
    "markdown_table",
    "training_details",
]
