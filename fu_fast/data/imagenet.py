"""ImageNet (or any image classification set) in the ImageFolder layout, read locally.

`data_dir/train/CLASS/*.JPEG` and `data_dir/val/CLASS/*.JPEG`. Split "train" reads
train/; "val" and "test" both read val/: the paper analyses the 50,000 validation
images, and ImageNet's own test labels are not public. Only the folder a split needs
must exist, so analysis works with the validation images alone; where both exist they
must hold the same class folders.
"""

from pathlib import Path

from torchvision import transforms
from torchvision.datasets import ImageFolder

from ..errors import FuFastError

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
LAYOUT = "the ImageFolder layout train/CLASS/*.JPEG and val/CLASS/*.JPEG"


def transform(*, augment: bool, image_size: int):
    """Training: random-resized crop + flip; evaluation: resize to 256/224 of the size
    (256 for 224, 341 for 299) and center crop. Then tensor and normalise."""
    if augment:
        steps = [transforms.RandomResizedCrop(image_size), transforms.RandomHorizontalFlip()]
    else:
        steps = [transforms.Resize(int(image_size * 256 / 224)), transforms.CenterCrop(image_size)]
    return transforms.Compose(steps + [transforms.ToTensor(), transforms.Normalize(MEAN, STD)])


def load(data_dir, split: str, *, augment: bool = False, image_size: int = 224) -> ImageFolder:
    """An ImageFolder for `split` with `num_classes` set (the number of class folders)."""
    if data_dir is None:
        raise FuFastError(f"imagenet needs a data directory in {LAYOUT}")
    folder = Path(data_dir).expanduser() / ("train" if split == "train" else "val")
    if not folder.is_dir():
        raise FuFastError(f"imagenet: no {folder.name}/ under {folder.parent} (expected {LAYOUT})")
    try:
        dataset = ImageFolder(str(folder), transform=transform(augment=augment, image_size=image_size))
    except FileNotFoundError as e:  # no class folders, or a class folder without images
        raise FuFastError(f"imagenet: {folder}: {e} (expected {LAYOUT})") from None
    # Labels are indices into the sorted class folders, so train/ and val/ must agree.
    other = folder.parent / ("val" if split == "train" else "train")
    if other.is_dir() and sorted(p.name for p in other.iterdir() if p.is_dir()) != dataset.classes:
        raise FuFastError(f"imagenet: {folder} and {other} have different class folders, "
                          f"so their labels would not match")
    dataset.num_classes = len(dataset.classes)
    return dataset
