"""The PCA baseline of examples/rbm-autoencoder: MNIST images (pixels scaled to [0, 1]) projected
on their first 30 principal components (fitted on the training set) and reconstructed; prints
the test set's squared reconstruction error per image, the figure the autoencoder is compared
with (Hinton & Salakhutdinov 2006 report 13.87 for 30-dimensional PCA, the autoencoder 3.00).

Usage: python3 benchmarks/pca_mnist.py [data/mnist] [components]   (needs numpy)
"""
import gzip
import sys

import numpy as np


def images(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    n, rows, cols = (int.from_bytes(data[i:i + 4], "big") for i in (4, 8, 12))
    return np.frombuffer(data, np.uint8, offset=16).reshape(n, rows * cols) / 255.0


def main():
    folder = sys.argv[1] if len(sys.argv) > 1 else "data/mnist"
    k = int(sys.argv[2]) if len(sys.argv) > 2 else 30
    train = images(f"{folder}/train-images-idx3-ubyte.gz")
    test = images(f"{folder}/t10k-images-idx3-ubyte.gz")
    mean = train.mean(axis=0)
    # The principal directions are the top right-singular vectors of the centred data.
    _, _, vt = np.linalg.svd(train - mean, full_matrices=False)
    basis = vt[:k]
    for name, x in (("train", train), ("test", test)):
        code = (x - mean) @ basis.T
        error = ((code @ basis + mean - x) ** 2).sum(axis=1).mean()
        print(f"{name}: {k}-component PCA, squared error per image {error:.3f}")


if __name__ == "__main__":
    main()
