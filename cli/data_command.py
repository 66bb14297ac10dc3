"""`fu-fast data`: fetch a data set (fu_fast.data.download), and the `--download` of train and analyze."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fu_fast.errors import FuFastError

from .console import err, out, user_errors

NOT_FETCHED = {
    "synthetic": "synthetic data is generated from --data-seed: nothing to fetch",
    "imagenet": "ImageNet is not downloaded by fu-fast: get it from https://image-net.org and give its "
                "train/ and val/ ImageFolder tree as --data-dir",
}


@user_errors
def data(
    name: str = typer.Argument(..., metavar="NAME", help="cifar10 (digits ships inside scikit-learn: it is checked, "
                                                         "not fetched)"),
    data_dir: Optional[Path] = typer.Argument(None, metavar="DIR", help="cifar10: where cifar-10-batches-py goes "
                                                                        "(the --data-dir of train and analyze)"),
) -> None:
    """Fetch and verify a data set: CIFAR-10's python batches into DIR/cifar-10-batches-py."""
    if name == "digits":
        from fu_fast.data import digits

        _, labels = digits.raw()
        out.print(f"digits: {len(labels):,} 8x8 images inside scikit-learn, nothing to fetch (use --data digits)",
                  highlight=False, soft_wrap=True)
        return
    if name in NOT_FETCHED:
        raise FuFastError(NOT_FETCHED[name])
    if name != "cifar10":
        raise FuFastError(f"unknown data set {name!r}; fu-fast fetches cifar10 (digits, synthetic and imagenet "
                          f"need no fetching here)")
    if data_dir is None:
        raise FuFastError("say where CIFAR-10 goes: fu-fast data cifar10 DIR")
    from fu_fast.data import download

    fetched = download.fetch(data_dir)
    how = "downloaded and verified" if fetched["downloaded"] else "verified"
    out.print(f"cifar10: {fetched['folder']} ({fetched['train']:,} training and {fetched['test']:,} test images, "
              f"{how}); use --data cifar10 --data-dir {data_dir}", highlight=False, soft_wrap=True)


def fetch_if_asked(download: bool, name: Optional[str], data_dir) -> None:
    """`--download` of train and analyze: fetch CIFAR-10 into ``data_dir`` when its files are not
    there (never without the flag, and never anything else)."""
    if not download:
        return
    if name != "cifar10":
        raise FuFastError(f"--download fetches cifar10 only, and the data is {name or 'not cifar10'}: leave it out")
    if data_dir is None:
        raise FuFastError("--download needs --data-dir DIR: where CIFAR-10 goes")
    from fu_fast.data import download as fetcher

    if not fetcher.present(data_dir):
        fetched = fetcher.fetch(data_dir)
        err.print(f"cifar10: {fetched['folder']} ({fetched['train']:,} training and {fetched['test']:,} test "
                  f"images, verified)", highlight=False, soft_wrap=True)
