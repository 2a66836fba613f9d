"""Benchmark networks from the private-inference literature, as plain torch `nn.Sequential` models.

Papers compare protocols on a handful of fixed architectures; rebuilding them exactly (layer kinds,
kernel sizes, strides, hidden widths) is what makes our latency/communication numbers comparable to
the published ones. Every builder returns an untrained model carrying `input_shape` (no batch), so
`privinfer.model.compile_model(model)` works without extra arguments. Square activations use
`privinfer.model.torch_layers.Square` so they compile to `Poly((0, 0, 1))`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from ..errors import PrivinferError
from ..model.torch_layers import Square


#: every zoo network is trained on pixels scaled to [0, 1] (0 = background, 1 = ink), published to clients
INPUT_RANGE = (0.0, 1.0)


def _seq(input_shape: tuple[int, ...], *layers: nn.Module) -> nn.Sequential:
    model = nn.Sequential(*layers)
    model.input_shape = tuple(input_shape)
    model.input_range = INPUT_RANGE
    return model


def cryptonets_mnist() -> nn.Sequential:
    """CryptoNets (Gilad-Bachrach et al., ICML'16): pad 28->29, conv 5x5/2 with 5 maps (845), x², 100, x², 10."""
    return _seq((1, 28, 28),
                nn.ZeroPad2d((0, 1, 0, 1)),
                nn.Conv2d(1, 5, kernel_size=5, stride=2),
                Square(),
                nn.Flatten(),
                nn.Linear(845, 100),
                Square(),
                nn.Linear(100, 10))


def minionn_mnist() -> nn.Sequential:
    """MiniONN (Liu et al., CCS'17) Fig. 12, also Gazelle's MNIST net: two conv5x5-ReLU-maxpool blocks, FC 100, FC 10."""
    return _seq((1, 28, 28),
                nn.Conv2d(1, 16, kernel_size=5),
                nn.ReLU(),
                nn.MaxPool2d(2),
                nn.Conv2d(16, 16, kernel_size=5),
                nn.ReLU(),
                nn.MaxPool2d(2),
                nn.Flatten(),
                nn.Linear(256, 100),
                nn.ReLU(),
                nn.Linear(100, 10))


def secureml_mnist() -> nn.Sequential:
    """SecureML (Mohassel & Zhang, S&P'17): MLP 784-128-128-10 with square activations."""
    return _seq((1, 28, 28),
                nn.Flatten(),
                nn.Linear(784, 128),
                Square(),
                nn.Linear(128, 128),
                Square(),
                nn.Linear(128, 10))


def deepsecure_mnist() -> nn.Sequential:
    """DeepSecure (Rouhani et al., DAC'18) MNIST benchmark: conv 5x5/2 pad 2 with 5 maps (980), ReLU, 100, ReLU, 10."""
    return _seq((1, 28, 28),
                nn.Conv2d(1, 5, kernel_size=5, stride=2, padding=2),
                nn.ReLU(),
                nn.Flatten(),
                nn.Linear(980, 100),
                nn.ReLU(),
                nn.Linear(100, 10))


def mixed_mnist() -> nn.Sequential:
    """A network that needs both HE and 2PC (privinfer's, for hybrid plans): conv 5x5/2 with 5 maps, x², conv 3x3
    with 10 maps, ReLU, max pool 2, FC 10. The natural plan runs conv-x²-conv in HE and ReLU + MaxPool in 2PC."""
    return _seq((1, 28, 28),
                nn.Conv2d(1, 5, kernel_size=5, stride=2),
                Square(),
                nn.Conv2d(5, 10, kernel_size=3),
                nn.ReLU(),
                nn.MaxPool2d(2),
                nn.Flatten(),
                nn.Linear(250, 10))


def wide_mlp_mnist() -> nn.Sequential:
    """A wide one-hidden-layer MLP, 784-1024-ReLU-10 (privinfer's, for the planner): SecureML-style MLPs open
    every weight of their first FC under 2PC on every query (8 x 784 x 1024 bytes each way), which BFV packs
    into one input ciphertext; the ReLU needs 2PC. Its weights are over the shipped-size limit: the zoo
    trains it deterministically on first use (`privinfer zoo train wide-mlp-mnist`)."""
    return _seq((1, 28, 28),
                nn.Flatten(),
                nn.Linear(784, 1024),
                nn.ReLU(),
                nn.Linear(1024, 10))


def tenseal_mnist() -> nn.Sequential:
    """TenSEAL tutorial 4 (encrypted convolution on MNIST): conv 7x7/3 with 4 maps (256), x², 64, x², 10."""
    return _seq((1, 28, 28),
                nn.Conv2d(1, 4, kernel_size=7, stride=3),
                Square(),
                nn.Flatten(),
                nn.Linear(256, 64),
                Square(),
                nn.Linear(64, 10))


def minionn_mnist_he() -> nn.Sequential:
    """MiniONN's MNIST net made HE-friendly (`make_he_friendly`: ReLU -> x², MaxPool -> AvgPool); its zoo weights
    are minionn-mnist's, fine-tuned (see `NetworkInfo.base`)."""
    from ..model.approx import make_he_friendly
    model = make_he_friendly(minionn_mnist())
    model.input_shape, model.input_range = (1, 28, 28), INPUT_RANGE
    return model


def minionn_cifar() -> nn.Sequential:
    """MiniONN (CCS'17) Fig. 13 CIFAR-10 net: seven convolutions (64/16 maps), two mean pools, FC 1024->10."""
    def conv(cin: int, cout: int, k: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, kernel_size=k, padding=k // 2), nn.ReLU()]
    return _seq((3, 32, 32),
                *conv(3, 64, 3), *conv(64, 64, 3), nn.AvgPool2d(2),
                *conv(64, 64, 3), *conv(64, 64, 3), nn.AvgPool2d(2),
                *conv(64, 64, 3), *conv(64, 64, 1), *conv(64, 16, 1),
                nn.Flatten(),
                nn.Linear(1024, 10))


@dataclass(frozen=True)
class NetworkInfo:
    """One zoo entry: how to build it, what it trains on, and how (see `train.py`)."""
    name: str
    builder: Callable[[], nn.Sequential]
    dataset: str  # "digits" (MNIST-shaped) or "digits-rgb32" (synthetic stand-in, NOT CIFAR-10)
    citation: str
    polynomial: bool  # only Conv/Linear/Poly/AvgPool/Flatten: evaluable under pure HE
    epochs: int = 60
    lr: float = 1e-3
    batch_size: int = 32
    clip: float | None = None  # gradient-norm clipping; x² nets can blow up without it
    shipped: bool = True  # weights ship in zoo/weights (under store.MAX_SHIPPED_BYTES); else trained on first use
    base: str | None = None  # trained from this zoo network's weights (make_he_friendly + finetune `epochs`)


NETWORKS: dict[str, NetworkInfo] = {n.name: n for n in (
    NetworkInfo("cryptonets-mnist", cryptonets_mnist, "digits",
                "Gilad-Bachrach et al., CryptoNets, ICML 2016", polynomial=True, clip=1.0),
    NetworkInfo("minionn-mnist", minionn_mnist, "digits",
                "Liu et al., MiniONN, CCS 2017 (Fig. 12); Juvekar et al., Gazelle, USENIX Sec 2018", polynomial=False,
                epochs=30),
    NetworkInfo("secureml-mnist", secureml_mnist, "digits",
                "Mohassel & Zhang, SecureML, IEEE S&P 2017", polynomial=True, clip=1.0),
    NetworkInfo("deepsecure-mnist", deepsecure_mnist, "digits",
                "Rouhani et al., DeepSecure, DAC 2018", polynomial=False),
    NetworkInfo("tenseal-mnist", tenseal_mnist, "digits",
                "Benaissa et al., TenSEAL, 2021 (tutorial 4: encrypted convolution on MNIST)", polynomial=True, clip=1.0),
    NetworkInfo("mixed-mnist", mixed_mnist, "digits",
                "privinfer (hybrid plans: x² and ReLU, convolutions and a max pool in one network)", polynomial=False,
                epochs=30, clip=1.0),
    NetworkInfo("minionn-mnist-he", minionn_mnist_he, "digits",
                "MiniONN's MNIST net (CCS 2017), make_he_friendly: x² for ReLU, AvgPool for MaxPool; fine-tuned",
                polynomial=True, epochs=8, clip=1.0, base="minionn-mnist"),
    NetworkInfo("wide-mlp-mnist", wide_mlp_mnist, "digits",
                "privinfer (planner: a wide first FC, cheap in BFV, expensive to open in 2PC on slow links)",
                polynomial=False, epochs=20, shipped=False),
    NetworkInfo("minionn-cifar", minionn_cifar, "digits-rgb32",
                "Liu et al., MiniONN, CCS 2017 (Fig. 13, CIFAR-10 net)", polynomial=False, epochs=8),
)}


class UnknownNetworkError(PrivinferError, KeyError):
    """A zoo name that is not in `NETWORKS`."""


def list_networks() -> list[str]:
    return list(NETWORKS)


def get_info(name: str) -> NetworkInfo:
    try:
        return NETWORKS[name]
    except KeyError:
        raise UnknownNetworkError(f"unknown network {name!r}; known: {', '.join(NETWORKS)}") from None


def build_network(name: str) -> nn.Sequential:
    """A fresh, untrained model (weights from torch's default init under the current RNG state)."""
    return get_info(name).builder()
