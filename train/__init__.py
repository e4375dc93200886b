"""avemo.train: streaming loaders, augmentation, the training loop, evaluation. Also callable as the public
API's `avemo.train(shards=..., run=...)` (avemo/__init__.py says why)."""
from avemo import _callable_package

_callable_package(__name__)
