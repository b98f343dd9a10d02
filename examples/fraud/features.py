"""Feature functions of the fraud example, used by processors that the bundles ship.

A processor that calls a function of the project (here ``FunctionTransformer(clip_amount)``)
stores it by name: the bundle ships the module that defines it. This module therefore must
not import relayml (a bundle loads where relayml is not installed); relay checks it at the
end of every training step and says so if it does.
"""

from __future__ import annotations

import numpy as np

AMOUNT_CAP = 2_500.0


def clip_amount(amounts):
    """Amounts clipped to ``[0, AMOUNT_CAP]``: a few huge transactions weigh less.

    Example:
        >>> clip_amount(np.array([-1.0, 10.0, 1e6])).tolist()
        [0.0, 10.0, 2500.0]
    """
    return np.clip(amounts, 0.0, AMOUNT_CAP)
