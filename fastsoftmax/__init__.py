# ---- top-k inner-product retrieval (issue 3) ----
import torch  # noqa: E402,F401  (loads libtorch before the extension)

from .index import ItemIndex  # noqa: E402
from .reference_topk import topk_inner_product_reference  # noqa: E402,F401
from .retrieval import topk_inner_product, topk_inner_product_bf16  # noqa: E402,F401
