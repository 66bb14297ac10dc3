"""ImageNet (or any image classification set) in the ImageFolder layout, read locally.

`data_dir/train/CLASS/*.JPEG` and `data_dir/val/CLASS/*.JPEG`. Split "train" reads
train/; "val" and "test" both read val/: the paper analyses the 50,000 validation
images, and ImageNet's own test labels are not public. Only the folder a split needs
must exist, so analysis works with the validation images alone; where both exist they
must hold the same class folders.

Images are decoded when an example is read, so a damaged file (empty, truncated, not an
image) is found then, not when the folder is listed (checking a million images up front
would cost as much as an epoch). It stops whatever is running -- training or analysis --
with one line naming the file: skipping it would silently change the data set a run
records. A training run stopped that way resumes from its last checkpoint once the file
is replaced by a readable copy (removing it instead changes the data under the run).
"""

import os
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from torchvision import transforms
from torchvision.datasets import ImageFolder

from ..errors import FuFastError
from ._common import one_line

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
LAYOUT = "the ImageFolder layout train/CLASS/*.JPEG and val/CLASS/*.JPEG"


class UnreadableImage(FuFastError):
    """A damaged image file.

    A DataLoader worker process sends an exception back as its formatted traceback, and the
    main process raises ``type(e)(text)`` where the text is "Caught ... in DataLoader worker
    process N.", the traceback, and last "<type>: <message>": the constructor keeps the
    message alone, so the error stays one line with workers too.
    """

    def __init__(self, message: str):
        if "Original Traceback" in message:
            message = message.rstrip().splitlines()[-1].split(": ", 1)[-1]
        super().__init__(message)


def load_image(path: str) -> Image.Image:
    """The RGB image at `path` (torchvision's pil_loader), or UnreadableImage naming the file."""
    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except UnidentifiedImageError:
        reason = "an empty file" if os.path.getsize(path) == 0 else "not an image format PIL reads"
    except Exception as e:  # truncated or corrupt data: PIL raises OSError, SyntaxError, ValueError, ...
        reason = one_line(e)
    raise UnreadableImage(f"imagenet: cannot read image {path} ({reason}); replace or delete it and run again "
                          f"(a damaged image stops training and analysis; a stopped training run resumes from its "
                          f"last checkpoint)")


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
        dataset = ImageFolder(str(folder), transform=transform(augment=augment, image_size=image_size),
                              loader=load_image)
    except FileNotFoundError as e:  # no class folders, or a class folder without images
        raise FuFastError(f"imagenet: {folder}: {e} (expected {LAYOUT})") from None
    # Labels are indices into the sorted class folders, so train/ and val/ must agree.
    other = folder.parent / ("val" if split == "train" else "train")
    if other.is_dir() and sorted(p.name for p in other.iterdir() if p.is_dir()) != dataset.classes:
        raise FuFastError(f"imagenet: {folder} and {other} have different class folders, "
                          f"so their labels would not match")
    dataset.num_classes = len(dataset.classes)
    return dataset
