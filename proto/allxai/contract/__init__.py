"""The model contract shared by the trainer and the gateway, with no TensorFlow in it.

``names``: the SavedModel's signature and tensor names and the files beside it; ``card``: the model card's
schema (what the trainer writes, what the gateway reads) and the class-name rules; ``preprocessing``: the one
path from encoded image bytes to the model's uint8 input, used by training and serving alike. Both sides
import this package and neither imports the other; it imports nothing else of ours.
"""
