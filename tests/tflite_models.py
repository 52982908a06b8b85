"""Tiny .tflite models built in the tests with TF + tf.lite.TFLiteConverter (about 0.5 s each).

Shared by test_edgetpu.py and test_tflite_model.py. Every builder takes the imported `tensorflow`
module (`tf`), so importing this module stays free of TensorFlow.
"""

from __future__ import annotations

import numpy as np

N_ANCHORS, N_CLASSES = 32, 3  # the mini SSD's anchors and classes (incl. background)


def representative_dataset():
    rng = np.random.default_rng(0)
    for _ in range(3):
        image = rng.uniform(0, 255, (1, 16, 16, 3)).astype(np.float32)
        image[0, 0, 0], image[0, 0, 1] = 0, 255  # calibrate the full uint8 range
        yield [image]


def int8_converter(tf, converter):
    """Full-int8 conversion with a uint8 input (custom ops allowed), as the export does."""
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_dataset
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8
    converter.allow_custom_ops = True
    return converter


def convert(tf, converter, *, int8=True) -> bytes:
    """The converted model's bytes: full int8 (see `int8_converter`) unless `int8=False` (float)."""
    if int8:
        int8_converter(tf, converter)
    return converter.convert()


def build_mini_ssd(tf) -> bytes:
    """int8 conv -> box/class heads -> DEQUANTIZE x2 -> CUSTOM TFLite_Detection_PostProcess (stub body).

    The op pattern of our SSD export, with N_ANCHORS anchors and N_CLASSES classes.
    """
    attrs = {
        "max_detections": ("i", 5), "max_classes_per_detection": ("i", 1),
        "num_classes": ("i", N_CLASSES - 1), "nms_score_threshold": ("f", 0.1),
        "nms_iou_threshold": ("f", 0.5),
        "y_scale": ("f", 10.0), "x_scale": ("f", 10.0), "h_scale": ("f", 5.0), "w_scale": ("f", 5.0),
        "use_regular_nms": ("b", "false"),
    }  # fmt: skip
    implements = 'name: "TFLite_Detection_PostProcess" ' + " ".join(
        f'attr {{ key: "{k}" value {{ {t}: {v} }} }}' for k, (t, v) in attrs.items()
    )

    @tf.function(experimental_implements=implements)
    def postprocess(box_encodings, class_predictions, anchors):
        zero = (tf.reduce_sum(box_encodings) + tf.reduce_sum(class_predictions) + tf.reduce_sum(anchors)) * 0
        return tf.zeros([1, 5, 4]) + zero, tf.zeros([1, 5]), tf.zeros([1, 5]) + zero, tf.constant([5.0])

    class Detector(tf.Module):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.w1 = tf.Variable(rng.normal(0, 0.1, (3, 3, 3, 8)).astype(np.float32))
            self.wb = tf.Variable(rng.normal(0, 0.1, (1, 1, 8, 2 * 4)).astype(np.float32))
            self.wc = tf.Variable(rng.normal(0, 0.1, (1, 1, 8, 2 * N_CLASSES)).astype(np.float32))
            self.anchors = tf.constant(rng.uniform(0.1, 0.9, (N_ANCHORS, 4)).astype(np.float32))

        @tf.function(input_signature=[tf.TensorSpec([1, 16, 16, 3], tf.float32)])
        def __call__(self, x):
            x = tf.nn.relu6(tf.nn.conv2d(x / 127.5 - 1, self.w1, 4, "SAME"))
            boxes = tf.reshape(tf.nn.conv2d(x, self.wb, 1, "SAME"), [1, N_ANCHORS, 4])
            classes = tf.sigmoid(tf.reshape(tf.nn.conv2d(x, self.wc, 1, "SAME"), [1, N_ANCHORS, N_CLASSES]))
            return postprocess(boxes, classes, self.anchors)

    det = Detector()
    return convert(
        tf, tf.lite.TFLiteConverter.from_concrete_functions([det.__call__.get_concrete_function()], det)
    )
