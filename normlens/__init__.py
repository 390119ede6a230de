"""normlens: probes, curvature and loss landscapes for normalized and norm-free transformers."""
from normlens.models import ZooConfig, build_model, get_config, norm_modules

__version__ = "0.1.0"
__all__ = ["ZooConfig", "build_model", "get_config", "norm_modules", "__version__"]
