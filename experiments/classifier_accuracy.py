"""Held-out accuracy of the evaluation classifier ``diffjax evaluate`` trains per dataset.

The recipe is the one :func:`diffjax.app.evaluate.evaluation_classifier` uses (the default
:func:`diffjax.networks.classifier.train_classifier`, seed 0, on the training split);
accuracy on the held-out split (digits: "heldout", Fashion-MNIST: "test"):

  python experiments/classifier_accuracy.py --dataset fashion_mnist
"""

import argparse
import time

import jax

from diffjax.data import load_dataset
from diffjax.networks.classifier import accuracy, train_classifier

HELD_OUT = {"digits": "heldout", "fashion_mnist": "test"}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=tuple(HELD_OUT), default="fashion_mnist")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    train = load_dataset(args.dataset, split="train")
    held_out = load_dataset(args.dataset, split=HELD_OUT[args.dataset])
    start = time.perf_counter()
    clf = train_classifier(train, key=jax.random.key(args.seed))
    seconds = time.perf_counter() - start
    print(f"{args.dataset}: {len(train.images)} training images, classifier trained in "
          f"{seconds:.0f} s; held-out accuracy {accuracy(clf, held_out):.2%} on "
          f"{len(held_out.images)} {HELD_OUT[args.dataset]} images")


if __name__ == "__main__":
    main()
