"""The model zoo: the literature's benchmark networks, offline data to train them, and shipped weights."""
from .data import load_dataset, load_digits_28, load_mnist_idx
from .networks import NETWORKS, NetworkInfo, build_network, list_networks
from .store import load_model, load_torch_model, save_weights
from .train import train_network

__all__ = ["NETWORKS", "NetworkInfo", "list_networks", "build_network", "load_model", "load_torch_model",
           "save_weights", "train_network", "load_dataset", "load_digits_28", "load_mnist_idx"]
