"""The context encoder's AlexNet trunk as timm models, registered when `pretrain` is imported.

    import pretrain, timm                                   # registers cebench_caffenet and cebench_alexnet
    model = timm.create_model("cebench_caffenet", pretrained=True,
                              pretrained_cfg_overlay=dict(file="results/voc-mini/ce.pt"))
    pool5 = model.forward_features(x)                       # (N, 256, 6, 6) at 227, as the suite's own loader
    conv = timm.create_model("cebench_caffenet", features_only=True, pretrained=True,
                             pretrained_cfg_overlay=dict(file="results/voc-mini/ce.pt"))  # [conv1 .. conv5]

`cebench_caffenet` is the paper's trunk (96-channel conv1, grouped conv2/4/5, LRN), `cebench_alexnet` the
torchvision-shaped one (its `features.*` keys are torchvision's). A ce.pt goes through timm's own loader
(`load_pretrained`, weights_only=True) and `checkpoint_filter_fn`, which takes its encoder; the trunk's width,
pool-free variant and input size come from the file unless given. `checkpoint_path=` takes the file that
`python -m pretrain.export --format timm` writes (or a ce.pt of the model's width); given as
`pretrained_cfg_overlay=dict(file=...)` instead, an export's own configuration (its `.safetensors` metadata, or
the `<name>.config.json` beside it) sets the width, pool-free variant and input size, as a ce.pt's does.
"""

import json
from pathlib import Path

from timm.layers import ClassifierHead
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from cebench.errors import CebenchError
from cebench.files import safe_torch_load
from pretrain.data import IMAGE_MEAN, IMAGE_STD
from pretrain.model import AlexNetEncoder
from pretrain.weights import FORMAT, check_checkpoint

MODEL_NAMES = {"caffenet": "cebench_caffenet", "torchvision": "cebench_alexnet"}
CONFIG_KEY = "cebench"  # the safetensors metadata key of an export's configuration (pretrain.export)


def config_path(export):
    """The configuration file beside an export: ce_caffenet.safetensors -> ce_caffenet.safetensors.config.json
    (the whole name, so that two exports of one stem keep their own)."""
    export = Path(export)
    return export.with_name(f"{export.name}.config.json")


def export_config(path):
    """The configuration pretrain.export stored with `path` (safetensors metadata, else the file beside it), or
    None for a file that has none."""
    path = Path(path)
    text = None
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), "pt") as f:
                text = (f.metadata() or {}).get(CONFIG_KEY)
        except Exception as err:  # safetensors raises its own error types for damaged headers
            raise CebenchError(f"{path}: not a readable safetensors file ({str(err)[:120]})") from None
    if text is None and config_path(path).is_file():
        text = config_path(path).read_text()
    if text is None:
        return None
    try:
        config = json.loads(text)
    except ValueError:
        raise CebenchError(f"{path}: its export configuration is not valid JSON") from None
    if not isinstance(config, dict) or config.get("format") != "cebench.export":
        raise CebenchError(f"{path}: its export configuration is not one pretrain.export wrote")
    return config


class TimmAlexNet(AlexNetEncoder):
    """AlexNetEncoder with timm's model interface: feature_info, forward_head, a (by default empty) head."""

    def __init__(self, arch="caffenet", pool_free=False, width=1.0, in_chans=3, num_classes=0, global_pool="avg",
                 drop_rate=0.0):
        super().__init__(arch=arch, pool_free=pool_free, width=width, in_channels=in_chans)
        self.in_chans, self.num_classes, self.drop_rate = in_chans, num_classes, drop_rate
        self.num_features = self.head_hidden_size = self.out_channels
        self.feature_info = self._feature_info()
        self.head = ClassifierHead(self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate)

    def _feature_info(self):
        """conv1..conv5 (after their ReLU) and pool5, with channels and stride w.r.t. the input."""
        info, reduction, relus = [], 1, {i + 1 for i in self._conv_idx}
        for i, layer in enumerate(self.features):
            downsample = layer[0] if hasattr(layer, "__getitem__") else layer
            stride = getattr(downsample, "stride", 1)
            reduction *= stride[0] if isinstance(stride, tuple) else stride
            if i in relus:
                info.append({"num_chs": self.features[i - 1].out_channels, "reduction": reduction,
                             "module": f"features.{i}"})
        info.append({"num_chs": self.out_channels, "reduction": reduction, "module": f"features.{i}"})
        return info

    def forward_head(self, x, pre_logits=False):
        """pool5 (N, C, h, w) -> globally pooled (N, C), or logits (N, num_classes) when there is a head."""
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))

    def get_classifier(self):
        return self.head.fc

    def reset_classifier(self, num_classes, global_pool=None):
        self.num_classes = num_classes
        self.head.reset(num_classes, pool_type=global_pool)

    def load_state_dict(self, state_dict, strict=True, assign=False):
        """A ce.pt dict is accepted wherever a state_dict is (timm's `checkpoint_path=` hands over the file's)."""
        return super().load_state_dict(checkpoint_filter_fn(state_dict, self), strict=strict, assign=assign)


def _describe(arch):
    return (f"{arch['arch']} trunk at width {arch['width']:g}" + (", pool-free" if arch["pool_free"] else ""))


def checkpoint_filter_fn(state_dict, model):
    """What timm's loader read -> this model's state_dict: a ce.pt gives its encoder, a torchvision AlexNet
    state_dict its `features.*`; a plain state_dict of the model passes unchanged."""
    if isinstance(state_dict, dict) and state_dict.get("format") == FORMAT:
        source = (getattr(model, "pretrained_cfg", None) or {}).get("file") or "this ce.pt"
        ckpt = check_checkpoint(state_dict, source)
        arch, wanted = ckpt["arch"], model.constructor_args()
        if arch != wanted:
            raise CebenchError(f"{source}: holds a {_describe(arch)}, the model is a {_describe(wanted)}; create "
                               f"timm.create_model({MODEL_NAMES[arch['arch']]!r}, width={arch['width']:g}, "
                               f"pool_free={arch['pool_free']})")
        return dict(ckpt["encoder"])
    if any(k.startswith("classifier.") for k in state_dict) and not any(k.startswith("head.") for k in state_dict):
        return {k: v for k, v in state_dict.items() if k.startswith("features.")}  # torchvision's AlexNet
    return state_dict


def _checkpoint_settings(model_arch, pretrained, kwargs):
    """Trunk kwargs and input size from the ce.pt named by pretrained_cfg_overlay['file'], when one is loaded."""
    overlay = dict(kwargs.get("pretrained_cfg_overlay") or {})
    path = overlay.get("file")
    if not pretrained or not path:
        return kwargs
    exported = export_config(path)
    if exported is not None:  # a file of pretrain.export: its configuration says what trunk it holds
        arch = {"arch": exported["arch"], "width": exported["width"], "pool_free": exported["pool_free"]}
        size = exported["input_size"][-1]
    else:
        obj = safe_torch_load(path, "weights file")
        if not (isinstance(obj, dict) and obj.get("format") == FORMAT):
            return kwargs  # a plain state_dict: the model's kwargs decide, load_state_dict checks the shapes
        arch = check_checkpoint(obj, path)["arch"]
        size = obj["meta"].get("input_size")
    if arch["arch"] != model_arch:
        raise CebenchError(f"{path}: holds a {arch['arch']} trunk; load it with "
                           f"timm.create_model({MODEL_NAMES[arch['arch']]!r}, ...)")
    kwargs = {"width": arch["width"], "pool_free": arch["pool_free"], **kwargs}
    if isinstance(size, int):
        trunk = AlexNetEncoder(arch=arch["arch"], width=arch["width"], pool_free=arch["pool_free"])
        pool = trunk.feature_shape(size)[1:]  # (h, w) of pool5
        overlay = {"input_size": (3, size, size), "pool_size": pool, **overlay}
    return {**kwargs, "pretrained_cfg_overlay": overlay}


def _create(variant, model_arch, pretrained=False, **kwargs):
    kwargs = _checkpoint_settings(model_arch, pretrained, kwargs)
    kwargs = {"width": 1.0, "pool_free": False, **kwargs}
    return build_model_with_cfg(TimmAlexNet, variant, pretrained, arch=model_arch,
                                pretrained_filter_fn=checkpoint_filter_fn,
                                feature_cfg={"flatten_sequential": True, "out_indices": (0, 1, 2, 3, 4)}, **kwargs)


def _cfg(size, **kwargs):
    return {"url": "", "num_classes": 0, "input_size": (3, size, size), "pool_size": (6, 6), "crop_pct": 0.875,
            "interpolation": "bilinear", "mean": IMAGE_MEAN, "std": IMAGE_STD, "first_conv": "features.0",
            "classifier": "head.fc", "license": "mit", "paper_ids": "arXiv:1604.07379",
            "paper_name": "Context Encoders: Feature Learning by Inpainting", **kwargs}


default_cfgs = generate_default_cfgs({
    "cebench_caffenet": _cfg(227, description="CaffeNet trunk of the context encoder (conv1-pool5)"),
    "cebench_alexnet": _cfg(224, description="torchvision-shaped AlexNet trunk (conv1-pool5)"),
})


@register_model
def cebench_caffenet(pretrained=False, **kwargs):
    """The paper's CaffeNet encoder: 96-channel conv1, grouped conv2/4/5, LRN after pool1/pool2."""
    return _create("cebench_caffenet", "caffenet", pretrained, **kwargs)


@register_model
def cebench_alexnet(pretrained=False, **kwargs):
    """torchvision's AlexNet `features` (64/192/384/256/256), the same keys."""
    return _create("cebench_alexnet", "torchvision", pretrained, **kwargs)
