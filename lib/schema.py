"""The declared schema of a profile: every key's type, range and allowed values, checked by `profiles.load`.

So the pipeline's `--set`, papermill's `-p OVERRIDES`, `lib.train` and a notebook's `Context` all refuse a bad
value before any kernel starts, with one sentence naming the key, the value and what is allowed.

Why pydantic (v2) and not a hand-written checker or jsonschema: the profile is ~150 keys in nested sections,
and a class per section with annotated fields (`steps: PosInt = OPT`) is the shortest readable declaration of
type + range + allowed values; pydantic's strict mode refuses `"abc"` for an int, `True` for an int and
`.nan`/`.inf` for a float without coercing anything, and reports the exact location of every error, which
`validate` turns into one sentence. jsonschema would need the same declarations as nested dicts plus its
own messages; a hand-written walker would re-implement both.

Validation never changes the profile: the dict that is hashed (`profiles.config_hash`) is the one loaded.
Every field is optional here (a section may omit a key; the code that reads it gives its default or its own
error); what is given must fit. Unknown keys are refused in every declared section.

To add a key: add one annotated field to its section class below (`OPT` as the default). To add a section:
a `Section` subclass and a field of `Profile`. Free-form sections (`claims`, `attributions.sanity`, ...)
are `dict[str, Any]` until the code that reads them declares them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError

OPT: Any = None  # default of every field: "not given" (defaults are not validated)

# Allowed names, kept equal to the modules that implement them by tests/test_schema.py (this foundation module
# cannot import them).
DATASETS = ("digits", "fashion_mnist", "mnist", "cifar10", "imagenet150")
ARCHS = ("small_cnn", "resnet18_cifar", "resnet50_cifar", "resnet18", "resnet50", "preact_resnet18",
         "wrn28_10", "wrn34_10")
METHODS = ("saliency", "smoothgrad", "ig", "eg", "shap", "deeplift", "agi", "big", "bsm", "bsg", "bdt")
SOURCES = ("madrylab", "robustbench", "boychev", "torchvision")

PosInt = Annotated[int, Field(ge=1)]
NonNegInt = Annotated[int, Field(ge=0)]
NonNeg = Annotated[float, Field(ge=0)]
Pos = Annotated[float, Field(gt=0)]
Unit = Annotated[float, Field(ge=0, le=1)]
Output = Literal["logit", "softmax"]
Method = Literal[METHODS]  # type: ignore[valid-type]
FreeForm = dict[str, Any]


class Section(BaseModel):
    """Strict: no coercion (\"5\" is not an int, True is not 1), no NaN or infinity, no unknown key."""
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class Train(Section):
    """`train:` and every training-recipe entry of `models:` (profiles.TRAIN_DEFAULTS lists the defaults)."""
    epochs: PosInt = OPT
    batch_size: PosInt = OPT
    lr: Pos = OPT
    momentum: Annotated[float, Field(ge=0, lt=1)] = OPT
    weight_decay: NonNeg = OPT
    nesterov: bool = OPT
    schedule: Literal["cosine", "step", "onecycle", "constant"] = OPT
    milestones: list[NonNegInt] = OPT
    warmup_epochs: NonNegInt = OPT
    amp: Literal["bf16", "fp16"] | None = OPT
    augment: Literal["crop_flip"] | None = OPT
    train_subset: PosInt | None = OPT
    ckpt_every: NonNegInt = OPT
    val_images: PosInt = OPT
    mode: Literal["standard", "pgd", "gradnorm"] = OPT
    norm: Literal["l2", "linf"] = OPT
    eps: NonNeg = OPT
    step_size: NonNeg = OPT
    steps: NonNegInt = OPT
    lam: NonNeg = OPT
    channels_last: bool | Literal["auto"] = OPT  # auto: on a CPU in one process (lib.models.place)
    compile: bool = OPT
    data_on_device: bool = OPT
    tf32: bool = OPT
    select: Literal["auto", "pgd", "clean", "mean"] = OPT
    joint: bool | Literal["auto", "true", "false"] = OPT
    labels: Literal["original", "shuffled"] | None = OPT
    seeds: PosInt = OPT  # in a `models:` entry: this recipe's training seeds, instead of the profile's `seeds`
    arch: Literal[ARCHS] = OPT  # type: ignore[valid-type]
    arch_kwargs: FreeForm = OPT


class External(Section):
    """A `models:` entry naming a published checkpoint (lib/zoo.py checks the combinations)."""
    source: Literal[SOURCES]  # type: ignore[valid-type]
    path: str
    arch: str = OPT
    name: str = OPT
    wnids: str = OPT
    mean: list[Unit] | None = OPT
    std: list[Pos] | None = OPT


def _entry_kind(value: Any) -> str:
    return "external" if isinstance(value, dict) and "source" in value else "recipe"


ModelEntry = Annotated[Annotated[Train, Tag("recipe")] | Annotated[External, Tag("external")],
                       Discriminator(_entry_kind)]


class DatasetOptions(Section):
    image_size: Annotated[int, Field(ge=8)] = OPT
    train_per_class: PosInt = OPT
    val_per_class: PosInt = OPT
    checksums: FreeForm | None = OPT


class Apgd(Section):
    images: PosInt = OPT
    steps: PosInt = OPT
    targets: PosInt = OPT
    restarts: PosInt = OPT
    batch_size: PosInt = OPT
    models: list[str] | None = OPT  # the recipes attacked (null: every model)


class Eval(Section):
    norm: Literal["l2", "linf"] = OPT
    eps: NonNeg = OPT
    step_size: NonNeg = OPT
    steps: NonNegInt = OPT
    val_steps: NonNegInt = OPT
    test_images: PosInt | None = OPT
    apgd: Apgd = OPT


class BoundarySearch(Section):
    eps_list: list[Pos] | None = OPT
    steps: PosInt = OPT
    loss: Literal["ce", "margin"] = OPT
    toward_nearest: bool = OPT
    refine_steps: NonNegInt = OPT
    bisect_steps: NonNegInt = OPT
    rtol: Annotated[float, Field(gt=0, lt=1)] = OPT


class Alignment(Section):
    n_images: PosInt = OPT
    batch_size: PosInt = OPT
    chunk: PosInt | None = OPT
    boundary: BoundarySearch = OPT
    distance_bins: PosInt = OPT
    min_per_bin: PosInt = OPT


class Ig(Section):
    steps: PosInt = OPT
    rule: Literal["trapezoid", "gausslegendre"] = OPT
    baseline: Literal["black", "uniform", "gaussian"] | None = OPT
    trials: PosInt = OPT
    output: Output = OPT


class SmoothGrad(Section):
    samples: PosInt = OPT
    sigma: NonNeg = OPT
    sigma_unit: Literal["pixel", "range", "std"] = OPT


class Sampled(Section):  # eg, shap
    samples: PosInt = OPT
    output: Output = OPT


class Agi(Section):
    steps: PosInt = OPT
    step_size: Pos = OPT
    classes: PosInt | None = OPT


class BoundaryAttr(Section):
    eps: Annotated[list[Pos], Field(min_length=1)] = OPT
    steps: PosInt = OPT
    rel_step: Pos = OPT
    refine_steps: NonNegInt = OPT


class Attributions(Section):
    n_images: PosInt = OPT
    grid_rows: PosInt = OPT
    grid_wrong: NonNegInt = OPT
    object_threshold: Unit | None = OPT
    background: PosInt = OPT
    batch_size: PosInt | None = OPT
    methods: list[Method] = OPT
    sweep_methods: list[Method] | None = OPT
    grids: list[Method] = OPT
    ig: Ig = OPT
    smoothgrad: SmoothGrad = OPT
    eg: Sampled = OPT
    shap: Sampled = OPT
    agi: Agi = OPT
    boundary: BoundaryAttr = OPT
    sanity: FreeForm = OPT
    faithfulness: FreeForm = OPT


class Inversion(Section):
    n: PosInt = OPT
    n_show: PosInt = OPT
    source: Literal["triple", "image"] = OPT
    eps: NonNeg = OPT
    step_size: NonNeg = OPT
    steps: NonNegInt = OPT
    batch_size: PosInt | None = OPT


class FeatureVis(Section):
    n_coords: PosInt = OPT
    n_seeds: PosInt = OPT
    k: PosInt = OPT
    pool: PosInt = OPT
    grain: PosInt = OPT
    max_images: PosInt | None = OPT
    seeds: Literal["data", "noise"] = OPT
    pick: bool = OPT
    eps: NonNeg = OPT
    step_size: NonNeg = OPT
    steps: NonNegInt = OPT


class Generation(Section):
    per_class: PosInt = OPT
    show_classes: PosInt | None = OPT
    grain: PosInt = OPT
    shrinkage: Unit = OPT
    max_images: PosInt | None = OPT
    seeds_from: Literal["train", "test"] = OPT
    eps: NonNeg = OPT
    step_size: NonNeg = OPT
    steps: NonNegInt = OPT
    batch_size: PosInt | None = OPT


class Visualize(Section):
    models: list[str] | None = OPT
    fake_relu: bool = OPT
    inversion: Inversion = OPT
    feature_vis: FeatureVis = OPT
    generation: Generation = OPT


class FeatureSpace(Train):
    """A `fid.feature_spaces` entry: Inception, or a domain classifier trained with these settings."""
    features: Literal["domain", "inception"] = OPT
    seed: NonNegInt = OPT


class Fid(Section):
    feature_spaces: dict[str, FeatureSpace] = OPT
    features: Literal["domain", "inception"] = OPT
    inversion_space: str = OPT
    weights: str | None = OPT
    per_class: PosInt = OPT
    seeds: Annotated[list[NonNegInt], Field(min_length=1)] = OPT
    batch_size: PosInt = OPT
    kid: Any = OPT
    budget_steps: Any = OPT


class Profile(Section):
    name: str = OPT
    dataset: Literal[DATASETS]  # type: ignore[valid-type]
    dataset_options: DatasetOptions | None = OPT
    arch: Literal[ARCHS] = OPT  # type: ignore[valid-type]
    arch_kwargs: FreeForm = OPT
    seed: NonNegInt = OPT
    seeds: PosInt = OPT
    workers: PosInt | Literal["auto"] = OPT  # lib.workers: per-model jobs side by side in one-thread processes
    train: Train = OPT
    eval: Eval = OPT
    models: dict[str, ModelEntry | None]
    sweeps: dict[str, dict[str, NonNeg]] = OPT
    alignment: Alignment = OPT
    paper: dict[str, dict[str, float | None]] | None = OPT
    visualize: Visualize = OPT
    fid: Fid = OPT
    attributions: Attributions = OPT
    claims: FreeForm = OPT


def validate(profile: dict, where: str = "the profile") -> None:
    """Raise ValueError (one sentence: the key, the value, what is allowed) unless `profile` fits `Profile`."""
    try:
        Profile.model_validate(profile)
    except ValidationError as e:
        raise ValueError(_sentence(e.errors(include_url=False), profile, where)) from None


def _sentence(errors: list[dict], profile: dict, where: str) -> str:
    first = _key(errors[0]["loc"], profile)
    same = [e for e in errors if _key(e["loc"], profile) == first]  # one key's union branches: "x or y"
    others = len({_key(e["loc"], profile) for e in errors}) - 1
    key = ".".join(map(str, first)) or "(top level)"
    value = _get(profile, first)
    kinds = {e["type"] for e in same}
    if "extra_forbidden" in kinds:
        return (f"{where}: unknown setting {key!r}; known at this level: {', '.join(_known(first, profile))} (a new "
                f"setting is declared in lib/schema.py).")
    if "missing" in kinds:
        return f"{where}: {key} is required and missing."
    allowed = " or ".join(dict.fromkeys(_allowed(e) for e in same))
    more = f" ({others} more setting{'s' if others > 1 else ''} also wrong)" if others else ""
    return f"{where}: {key} = {value!r} is not allowed: it must be {allowed}{more}."


def _allowed(err: dict) -> str:
    msg = err["msg"]
    if err["type"] in ("model_type", "dict_type", "model_attributes_type"):
        return "a mapping of its settings"
    for lead in ("Input should be ", "Value should be "):
        if msg.startswith(lead):
            msg = msg[len(lead):]
    for lead, plain in (("a valid integer", "an integer"), ("a valid number", "a number"),
                        ("a valid boolean", "true or false"), ("a valid string", "a string"),
                        ("a valid list", "a list"), ("a valid dictionary", "a mapping")):
        msg = msg.replace(lead, plain)
    return msg.replace("greater than or equal to", ">=").replace(
        "less than or equal to", "<=").replace("greater than", ">").replace("less than", "<")


def _key(loc: tuple, profile: Any) -> tuple:
    """The part of pydantic's error location that names keys of the profile (drops union/tag names)."""
    out, node = [], profile
    for part in loc:
        if isinstance(node, dict) and part in node:
            out.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            out.append(part)
            node = node[part]
    return tuple(out)


def _get(profile: Any, key: tuple) -> Any:
    for part in key:
        profile = profile[part]
    return profile


def _known(key: tuple, profile: dict) -> list[str]:
    """Declared field names of the section that holds `key` (the unknown key's parent)."""
    cls, i = Profile, 0
    while i < len(key) - 1:
        if key[:i + 1] in ENTRY_MAPS:  # models.<key>, fid.feature_spaces.<name>: the entry's class
            cls = ENTRY_MAPS[key[:i + 1]](_get(profile, key[:i + 2]))
            i += 2
            continue
        cls = _section(cls.model_fields[key[i]].annotation)
        i += 1
    return sorted(cls.model_fields)


def _section(annotation: Any) -> Any:
    """The Section class inside a field's annotation (`X`, `X | None`)."""
    if isinstance(annotation, type) and issubclass(annotation, Section):
        return annotation
    return next(a for a in getattr(annotation, "__args__", ()) if isinstance(a, type) and issubclass(a, Section))


ENTRY_MAPS = {("models",): lambda v: External if _entry_kind(v) == "external" else Train,
              ("fid", "feature_spaces"): lambda v: FeatureSpace}
