"""Model family for Noisy Student on small images, registered in timm's model registry.

Importing this package registers ``nsp_resnet_{s,m,l}`` (and friends) so that
``timm.create_model("nsp_resnet_s", num_classes=10, in_chans=1, drop_rate=0.2, drop_path_rate=0.2)`` works.
"""

from nsp.models import resnet  # noqa: F401  (registers the entry points)
from nsp.models.factory import MODEL_FAMILY, build_model, count_params  # noqa: F401
