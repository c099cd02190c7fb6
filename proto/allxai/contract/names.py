"""The model contract between the trainer and the gateway: signature and tensor names.

A SavedModel in TensorFlow Serving's layout ``<base>/<model_name>/<version>/`` with:

- ``serving_default``: ``images`` uint8 ``[N, H, W, 3]`` -> ``probabilities`` float32 ``[N, C]`` and,
  where the export carries a domain gate, ``domain_score`` float32 ``[N]``;
- ``compose``: ``image`` uint8 ``[H, W, 3]``, ``fill`` uint8 ``[H, W, 3]``, ``segments`` int32
  ``[H, W]``, ``masks`` uint8 ``[N, S]`` -> ``probabilities``: the perturbed images of an
  explanation are built next to the model instead of crossing the wire;
- ``model_card``: no inputs -> ``model_card``, a JSON string (class names, input size, ...; the schema
  is :mod:`allxai.contract.card`), also written to ``assets.extra/model_card.json``.

This module holds names only (no TensorFlow), so the thin client and the gateway can share it.
"""

SERVING_SIGNATURE = "serving_default"
SERVING_INPUT = "images"
COMPOSE_SIGNATURE = "compose"
COMPOSE_INPUTS = ("image", "fill", "segments", "masks")
CARD_SIGNATURE = "model_card"
CARD_OUTPUT = "model_card"
OUTPUT = "probabilities"
#: ``serving_default``'s out-of-domain score ``[N]`` float32, beside the probabilities, in exports that
#: carry a domain gate (the card's ``domain`` entry names it and gives its threshold).
DOMAIN_OUTPUT = "domain_score"
CARD_FILE = "assets.extra/model_card.json"
WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
#: Classes that are not leukaemic (Aria's hematogones, C-NMC's normal cells): a specimen's blast
#: fraction counts every other class.
NORMAL_CLASS_NAMES = frozenset({"Benign", "hem", "normal"})
